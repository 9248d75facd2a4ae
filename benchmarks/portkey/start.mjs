// Start Portkey's gateway (npm @portkey-ai/gateway, pinned in package-lock.json) bound to
// 127.0.0.1 only, for benchmarks/sidecar_proxy.py.
//
//   node benchmarks/portkey/start.mjs --port=8787 --headless
//
// The published build/start-server.js calls `serve({fetch: app.fetch, port})` without a
// hostname, so it listens on every interface. This writes a copy next to it (same directory,
// so its imports and public/ resolve) with `hostname: "127.0.0.1"` added to that call, and runs
// the copy with the same arguments. It fails loudly if the call is not found exactly once
// (a different gateway version): the benchmark must never expose a port beyond loopback.
//
// Streaming workaround: on this Node (20) the gateway answers every streamed chat completion
// with 500 "Something went wrong" — ResponseService.updateHeaders appends x-portkey-* headers
// to a Response whose headers are immutable ("TypeError: immutable", Portkey-AI/gateway#1389,
// #1550; pinning @hono/node-server to 1.14.2 fixes the JSON path only). As the upstream fix
// proposals do (gateway PR #1390), a header change refused with "immutable" is skipped: the
// stream goes through without the gateway's informational x-portkey-* response headers.
// Nothing else is changed; set PORTKEY_NO_HEADER_WORKAROUND=1 to run the gateway unpatched.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const require = createRequire(import.meta.url);
const pkgJson = require.resolve("@portkey-ai/gateway/package.json");
const build = join(dirname(pkgJson), "build");
const source = readFileSync(join(build, "start-server.js"), "utf8");

const call = /\{fetch:([A-Za-z_$][\w$]*)\.fetch,port:([A-Za-z_$][\w$]*)\}/g;
const found = source.match(call) ?? [];
if (found.length !== 1) {
  console.error(
    `portkey/start.mjs: expected one serve({fetch, port}) call in start-server.js, found ` +
      `${found.length}; refusing to start a gateway bound to all interfaces`
  );
  process.exit(3);
}
const patched = source.replace(call, '{fetch:$1.fetch,port:$2,hostname:"127.0.0.1"}');
const target = join(build, "start-server.aiguard-loopback.mjs");
writeFileSync(target, patched);
if (!process.env.PORTKEY_NO_HEADER_WORKAROUND) {
  for (const name of ["append", "set", "delete"]) {
    const original = Headers.prototype[name];
    Headers.prototype[name] = function (...args) {
      try {
        return original.apply(this, args);
      } catch (err) {
        if (err instanceof TypeError && err.message === "immutable") return undefined;
        throw err;
      }
    };
  }
}
const version = JSON.parse(readFileSync(pkgJson, "utf8")).version;
console.log(`portkey/start.mjs: @portkey-ai/gateway ${version} bound to 127.0.0.1`);
await import(pathToFileURL(target).href);
