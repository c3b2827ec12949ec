/**
 * Serialises async work per key inside one process. An agent may get the same operation twice at once (a
 * redelivery racing the original); the second must see the first's result, not race it on the disk.
 */
export interface KeyedLock {
  run<T>(key: string, fn: () => Promise<T>): Promise<T>;
}

export function createKeyedLock(): KeyedLock {
  const tails = new Map<string, Promise<unknown>>();
  return {
    async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
      const prev = tails.get(key) ?? Promise.resolve();
      const next = prev.then(fn);
      // The tail never rejects, so one failure does not poison the queue for the key.
      const tail = next.then(
        () => undefined,
        () => undefined,
      );
      tails.set(key, tail);
      try {
        return await next;
      } finally {
        if (tails.get(key) === tail) tails.delete(key);
      }
    },
  };
}
