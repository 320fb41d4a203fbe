// agent-orchestrator's pool for every OpenClaw agent run.
//
// before_agent_run (a gate hook the runner awaits before the model sees the prompt)
// asks `POST {url}/pool/acquire` for a token and waits up to `waitSeconds`; agent_end
// gives it back with `POST {url}/pool/release`. A run that gets no token in time is
// blocked with a message saying why. Set the gateway's hook budget above the wait:
// plugins.entries.orchestrator-pool.hooks.timeouts.before_agent_run (milliseconds).

import { readFileSync } from "node:fs";

const DEFAULT_WAIT = 120;

function readToken(cfg, tokenEnv) {
  if (cfg.tokenFile) {
    try {
      return readFileSync(cfg.tokenFile, "utf8").trim();
    } catch {
      return "";
    }
  }
  return (process.env[tokenEnv] ?? "").trim();
}

function settings(api) {
  const cfg = api.pluginConfig ?? {};
  const tokenEnv = cfg.tokenEnv ?? "ORCH_POOL_TOKEN";
  return {
    url: String(cfg.url ?? "").replace(/\/+$/, ""),
    token: readToken(cfg, tokenEnv),
    tokenEnv,
    wait: typeof cfg.waitSeconds === "number" ? cfg.waitSeconds : DEFAULT_WAIT,
    failOpen: cfg.failOpen !== false,
    agent: cfg.agent,
  };
}

async function post(s, path, body, timeoutMs) {
  const res = await fetch(`${s.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${s.token}` },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  let data = {};
  try {
    data = await res.json();
  } catch {
    // not JSON: the status says enough
  }
  return { status: res.status, data };
}

// A task the engine delegated carries its run id in the handoff block ("run_id: ...");
// the engine already holds a pool token for it, which the pool endpoint then counts.
function engineRunId(event) {
  const text = typeof event?.prompt === "string" ? event.prompt : "";
  const found = [...text.matchAll(/^run_id:[ \t]*([A-Za-z0-9_-]{1,128})[ \t]*$/gm)];
  return found.length ? found[found.length - 1][1] : undefined;
}

function runKey(event, ctx) {
  return ctx?.runId ?? event?.runId ?? ctx?.sessionKey ?? null;
}

export default {
  id: "orchestrator-pool",
  name: "Orchestrator pool",
  description: "Holds a token of agent-orchestrator's pool for the length of each agent run.",
  register(api) {
    const s = settings(api);
    const log = api.logger ?? console;
    if (!s.url) {
      log.warn?.("orchestrator-pool: `url` is not set; agent runs are not limited");
      return;
    }
    if (!s.token) log.warn?.("orchestrator-pool: no pool token (tokenFile or tokenEnv); the pool will refuse");

    api.on(
      "before_agent_run",
      async (event, ctx) => {
        const runId = runKey(event, ctx);
        if (!runId) return undefined;
        const agent = s.agent ?? ctx?.agentId ?? "openclaw";
        let answer;
        try {
          answer = await post(
            s,
            "/pool/acquire",
            { runId, agent, waitSeconds: s.wait, engineRunId: engineRunId(event) },
            (s.wait + 10) * 1000,
          );
        } catch (err) {
          log.warn?.(`orchestrator-pool: the pool at ${s.url} is unreachable: ${err?.name ?? err}`);
          if (s.failOpen) return undefined;
          return { outcome: "block", reason: "pool unreachable",
                   message: "The host's agent pool cannot be reached; try again later." };
        }
        if (answer.status === 200) return { outcome: "pass" };
        log.warn?.(`orchestrator-pool: no token for ${runId} (HTTP ${answer.status})`);
        return {
          outcome: "block",
          reason: `pool: HTTP ${answer.status}`,
          message: "The host is at its limit of concurrent agent runs; try again later.",
        };
      },
      { timeoutMs: (s.wait + 15) * 1000 },
    );

    api.on("agent_end", async (event, ctx) => {
      const runId = runKey(event, ctx);
      if (!runId) return;
      try {
        await post(s, "/pool/release", { runId }, 10_000);
      } catch (err) {
        log.warn?.(`orchestrator-pool: release of ${runId} failed: ${err?.name ?? err}`);
      }
    });
  },
};
