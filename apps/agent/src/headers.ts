/**
 * A small `Headers` (the Fetch API's header list) for the agent process. Node defines `globalThis.Headers` lazily:
 * the first touch loads undici, its whole HTTP client with a WebAssembly parser, for the life of the process
 * (2 to 3 MiB of resident memory in the agent, measured beside its other modules; 13 MiB in a bare node). The agent touches it only because connect's gRPC client builds its
 * request headers with it (RegisterAgent), and it uses no other part of undici; so main.ts installs this
 * class before anything runs (docs/operating.md, "The agent's memory"). It keeps the behaviour connect relies on,
 * as the Fetch standard defines it: names case-insensitive and stored lower-case, `append` joining values with
 * ", ", iteration sorted by name. Tests compare it with Node's own `Headers`.
 */
export class LightHeaders {
  private readonly map = new Map<string, string>();

  constructor(init?: LightHeaders | Iterable<readonly [string, string]> | Record<string, string>) {
    if (init === undefined || init === null) return;
    if (init instanceof LightHeaders) {
      for (const [k, v] of init) this.append(k, v);
    } else if (typeof (init as Iterable<unknown>)[Symbol.iterator] === "function") {
      for (const pair of init as Iterable<readonly [string, string]>) {
        if (pair.length !== 2) throw new TypeError("Headers: each init pair needs a name and a value");
        this.append(pair[0], pair[1]);
      }
    } else {
      for (const [k, v] of Object.entries(init as Record<string, string>)) this.append(k, v);
    }
  }

  append(name: string, value: string): void {
    const k = headerName(name);
    const v = headerValue(value);
    const had = this.map.get(k);
    this.map.set(k, had === undefined ? v : `${had}, ${v}`);
  }

  set(name: string, value: string): void {
    this.map.set(headerName(name), headerValue(value));
  }

  get(name: string): string | null {
    return this.map.get(headerName(name)) ?? null;
  }

  has(name: string): boolean {
    return this.map.has(headerName(name));
  }

  delete(name: string): void {
    this.map.delete(headerName(name));
  }

  getSetCookie(): string[] {
    const v = this.map.get("set-cookie");
    return v === undefined ? [] : [v];
  }

  forEach(fn: (value: string, name: string, parent: LightHeaders) => void, thisArg?: unknown): void {
    for (const [k, v] of this) fn.call(thisArg, v, k, this);
  }

  *entries(): IterableIterator<[string, string]> {
    for (const k of [...this.map.keys()].sort()) yield [k, this.map.get(k)!];
  }

  *keys(): IterableIterator<string> {
    for (const [k] of this.entries()) yield k;
  }

  *values(): IterableIterator<string> {
    for (const [, v] of this.entries()) yield v;
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }

  get [Symbol.toStringTag](): string {
    return "Headers";
  }
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function headerName(name: string): string {
  const n = String(name);
  if (!TOKEN.test(n)) throw new TypeError(`Headers: invalid header name ${JSON.stringify(n.slice(0, 64))}`);
  return n.toLowerCase();
}

function headerValue(value: string): string {
  // Leading and trailing HTTP whitespace is removed, as by the standard; NUL, CR and LF are refused.
  const v = String(value).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "");
  if (/[\0\r\n]/.test(v)) throw new TypeError("Headers: invalid header value");
  return v;
}

/**
 * Puts LightHeaders in place of Node's `Headers`, unless something has already loaded the real one (then the
 * memory is spent anyway, and one class is better than two). Answers whether it did.
 */
export function installLightHeaders(): boolean {
  const d = Object.getOwnPropertyDescriptor(globalThis, "Headers");
  // Node's own is an accessor until first use; a plain value means it was used or replaced already.
  if (d && !d.get) return false;
  Object.defineProperty(globalThis, "Headers", {
    value: LightHeaders,
    writable: true,
    configurable: true,
    enumerable: false,
  });
  return true;
}
