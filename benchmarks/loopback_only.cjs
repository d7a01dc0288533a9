// Preloaded into supergateway (node --require), which has no option for its listen address:
// a server that asks for a port without a host is bound to 127.0.0.1 instead of every
// interface, so that the benchmark keeps all traffic on loopback.
"use strict";
const net = require("node:net");

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && typeof args[1] !== "string") {
    args.splice(1, 0, "127.0.0.1");
  } else if (args[0] && typeof args[0] === "object" && args[0].host === undefined) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};
