import { create } from "@bufbuild/protobuf";
import { type GetDiskXmlRequest, GetDiskXmlResponseSchema } from "@stowage/proto";
import { afterEach, describe, expect, it } from "vitest";
import { type FakeController, startFakeController } from "./testing/fake-controller.js";
import { runStowctl } from "./testing/run.js";

let fake: FakeController | undefined;
afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

async function stowctl(args: string[]) {
  return runStowctl(args, { STOWAGE_SERVER: fake?.url });
}

const DISK = `<disk type="file" device="disk">\n  <source file="/pools/a/vol-1.qcow2"/>\n</disk>\n`;

describe("volume xml", () => {
  it("prints the <disk> element and the <iothreadpin>, passing the host, device and IO thread asked for", async () => {
    fake = await startFakeController({
      exports: {
        getDiskXml: () =>
          create(GetDiskXmlResponseSchema, {
            diskXml: DISK,
            iothreadPinXml: '<iothreadpin iothread="1" cpuset="2-3"/>',
            cpuSet: "2-3",
          }),
      },
    });
    const r = await stowctl([
      "volume",
      "xml",
      "vm1-disk0",
      "--host",
      "node1",
      "--target-dev",
      "vdc",
      "--iothread",
      "1",
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${DISK}<iothreadpin iothread="1" cpuset="2-3"/>\n`);
    expect(fake.requests<GetDiskXmlRequest>("getDiskXml")).toEqual([
      expect.objectContaining({ volume: "vm1-disk0", hostId: "node1", targetDev: "vdc", iothread: 1 }),
    ]);
    const json = await stowctl(["volume", "xml", "vm1-disk0", "-o", "json"]);
    expect(JSON.parse(json.stdout)).toMatchObject({ diskXml: DISK, cpuSet: "2-3" });
    expect(fake.requests<GetDiskXmlRequest>("getDiskXml")[1]).toMatchObject({
      hostId: "",
      targetDev: "vdb",
      iothread: 0,
    });
  });

  it("refuses a bad IO thread before sending anything", async () => {
    fake = await startFakeController({});
    const r = await stowctl(["volume", "xml", "vm1-disk0", "--iothread", "lots"]);
    expect(r.code).toBe(2);
    expect(fake.calls).toEqual([]);
  });
});
