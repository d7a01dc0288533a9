// Preloaded into every lark-mcp child with `node --require`.
// The gateway holds the write end of the child's stdin and never writes to it, so the end of
// stdin means the gateway is gone, however it went (SIGKILL included): the child follows at
// once instead of living on untracked.
'use strict';
const leave = () => process.exit(0);
process.stdin.on('end', leave);
process.stdin.on('error', leave);
process.stdin.resume();
