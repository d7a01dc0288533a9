// PM2 runs the LarkGate gateway (a Python program, so no Node interpreter) from its venv.
//
//   pm2 start deploy/ecosystem.config.js && pm2 save
//
// Settings come from the environment PM2 is started in, or from the TOML file named by
// LARKGATE_CONFIG (default /etc/larkgate/larkgate.toml when that file exists).
const fs = require("fs");
const path = require("path");

const root = process.env.LARKGATE_HOME || path.resolve(__dirname, "..");
const logDir = process.env.LARKGATE_LOG_DIR || path.join(root, "logs");
const config = process.env.LARKGATE_CONFIG || "/etc/larkgate/larkgate.toml";

module.exports = {
  apps: [
    {
      name: "larkgate",
      script: path.join(root, ".venv", "bin", "larkgate"),
      args: "serve",
      interpreter: "none",
      cwd: root,
      exec_mode: "fork",
      instances: 1,
      autorestart: true,
      // Restart the gateway process past this RSS. lark-mcp children are separate
      // processes with their own heap cap (LARKGATE_CHILD_HEAP_MB) and memory alert.
      max_memory_restart: process.env.LARKGATE_PM2_MAX_MEMORY || "768M",
      // Only the gateway gets the stop signal; it stops its children itself, in order.
      // With treekill the children would die first and look like crashes.
      treekill: false,
      kill_timeout: 20000,
      min_uptime: "10s",
      max_restarts: 20,
      restart_delay: 2000,
      exp_backoff_restart_delay: 1000,
      // The gateway writes JSON lines with their own timestamps to stderr.
      error_file: path.join(logDir, "larkgate.log"),
      out_file: path.join(logDir, "larkgate.out.log"),
      merge_logs: true,
      time: false,
      env: {
        PYTHONUNBUFFERED: "1",
        ...(fs.existsSync(config) ? { LARKGATE_CONFIG: config } : {}),
      },
    },
  ],
};
