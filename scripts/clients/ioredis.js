// oncelog serve driven by ioredis (Node.js): SET NX with EX and PX, GET, TTL, EXISTS, a
// pipeline, ONCE.BEGIN, DEL and DBSIZE. Prints the replies as JSON; exits 1 on an error
// or an unexpected reply.
//
//   npm install --prefix /tmp/ioredis ioredis@5
//   NODE_PATH=/tmp/ioredis/node_modules node scripts/clients/ioredis.js PORT   # an empty store
const Redis = require("ioredis");

(async () => {
  const r = new Redis({ port: Number(process.argv[2]), host: "127.0.0.1" });
  const out = [];
  out.push(await r.set("io:1", "first", "EX", 3600, "NX"));
  out.push(await r.set("io:1", "second", "EX", 3600, "NX"));
  out.push(await r.get("io:1"));
  out.push(await r.ttl("io:1"));
  out.push(await r.exists("io:1", "io:none"));
  const p = r.pipeline();
  for (let i = 0; i < 100; i++) p.set("io:p" + (i % 50), "v", "PX", 60000, "NX");
  out.push((await p.exec()).filter(([e, v]) => !e && v === "OK").length);
  const begun = await r.call("ONCE.BEGIN", "io:job", "5000");
  out.push(begun[0]);
  out.push(await r.del("io:1"));
  out.push(await r.dbsize());
  console.log(JSON.stringify(out));
  r.disconnect();
  const want = JSON.stringify(["OK", null, "first", 3600, 1, 50, "acquired", 1, 51]);
  if (JSON.stringify(out) !== want) {
    console.error("expected " + want);
    process.exit(1);
  }
})().catch((e) => {
  console.error("error:", e);
  process.exit(1);
});
