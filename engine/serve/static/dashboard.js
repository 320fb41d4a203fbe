// The dashboard's script: reads /v1 with the token in a header; no other origin.
"use strict";
const $ = (s) => document.querySelector(s);
const esc = (t) => String(t ?? "").replace(/[&<>"']/g,
  (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
function token(){ return localStorage.getItem("orchToken") || ""; }
function headers(extra){
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}
async function api(path, opts){
  opts = opts || {};
  const r = await fetch(path, {method: opts.method || "GET", cache: "no-store",
    headers: headers(opts.body ? {"Content-Type": "application/json"} : {}),
    body: opts.body ? JSON.stringify(opts.body) : undefined});
  const text = await r.text();
  let data = null; try { data = JSON.parse(text); } catch (e) { data = text; }
  if (!r.ok) { throw new Error((data && data.detail) || r.statusText); }
  return data;
}
function say(t){ $("#msg").textContent = t || ""; }
// Server-sent events over fetch, so that the token travels in a header, never in a URL.
async function follow(path, onEvent){
  let last = null;
  for (;;) {
    try {
      const h = headers(last ? {"Last-Event-ID": last} : {});
      const r = await fetch(path, {headers: h, cache: "no-store"});
      if (!r.ok) throw new Error(r.statusText);
      const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = "";
      for (;;) {
        const {value, done} = await reader.read(); if (done) break;
        buf += dec.decode(value, {stream: true}); let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          let data = null;
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) last = line.slice(4);
            if (line.startsWith("data: ")) data = line.slice(6);
          }
          if (data) { try { onEvent(JSON.parse(data)); } catch (e) {} }
        }
      }
    } catch (e) { /* reconnect below */ }
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}
function debounce(fn, ms){ let t = null; return () => { clearTimeout(t); t = setTimeout(fn, ms); }; }
const badge = (s) => `<span class="s s-${esc(s)}">${esc(s)}</span>`;

async function runsPage(){
  $("#app").innerHTML = `<section><h3>Start a workflow</h3>
   <form id="start"><select id="wf"></select>
   <input id="inputs" size="50" placeholder="inputs: name=value; name=value">
   <button id="start-btn" type="submit">start</button></form></section>
   <section><h3>Runs</h3><table><thead><tr><th>run</th><th>workflow</th><th>status</th>
   <th>started</th><th>steps</th></tr></thead><tbody id="runs"></tbody></table></section>
   <div class="grid"><section><h3>Pool</h3><div id="pool"></div></section>
   <section><h3>Agents</h3><div id="agents"></div></section></div>`;
  try {
    const wfs = await api("/v1/workflows");
    $("#wf").innerHTML = wfs.workflows.map((w) =>
      `<option value="${esc(w.name)}">${esc(w.name)}</option>`).join("");
  } catch (e) { say(e.message); }
  $("#start").onsubmit = async (ev) => {
    ev.preventDefault();
    const inputs = {};
    for (const part of $("#inputs").value.split(";")) {
      const k = part.indexOf("="); if (k > 0) inputs[part.slice(0, k).trim()] = part.slice(k + 1).trim();
    }
    try {
      const r = await fetch("/v1/runs", {method: "POST", headers: headers({
        "Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID()}),
        body: JSON.stringify({workflow: $("#wf").value, inputs: inputs})});
      const data = await r.json();
      if (!r.ok) throw new Error(data.detail || r.statusText);
      location.href = "/runs/" + encodeURIComponent(data.runId);
    } catch (e) { say(e.message); }
  };
  const refresh = async () => {
    try {
      const data = await api("/v1/runs?limit=50");
      $("#runs").innerHTML = data.runs.map((r) => `<tr><td><a href="/runs/${esc(r.runId)}">
        ${esc(r.runId)}</a></td><td>${esc(r.workflow)}</td><td>${badge(r.status)}</td>
        <td>${esc(r.started_at)}</td><td>${esc(Object.entries(r.steps).map(
        ([k, v]) => k + " " + v).join(", "))}</td></tr>`).join("");
      say("");
    } catch (e) { say(e.message); }
  };
  const side = async () => {
    try {
      const p = await api("/v1/pool");
      $("#pool").innerHTML = p.enabled ? `size ${esc(p.size)}, mode ${esc(p.mode)},
        in use ${esc((p.in_use || []).length)}, queued ${esc((p.queue || []).length)}`
        : "pool disabled";
      const a = await api("/v1/agents");
      $("#agents").innerHTML = "<table>" + a.agents.map((g) => `<tr><td>${esc(g.name)}</td>
        <td>${badge(g.health)}</td><td>${esc(g.detail || "")}</td></tr>`).join("") + "</table>";
    } catch (e) { say(e.message); }
  };
  await refresh(); side(); setInterval(side, 15000);
  follow("/v1/events/stream", debounce(refresh, 200));
}

function stepDetails(s){
  const parts = [];
  if (s.waiting) parts.push(`<div><b>waiting:</b> ${esc(s.waiting)}</div>`);
  if (s.task) parts.push(`<div><b>task</b><pre>${esc(s.task)}</pre></div>`);
  const h = s.handoff || {};
  if (h.result) parts.push(`<div><b>result</b><pre>${esc(h.result)}</pre></div>`);
  if (h.notes) parts.push(`<div><b>notes:</b> ${esc(h.notes)}</div>`);
  if (s.validation) parts.push(`<div><b>validation:</b> ${esc(JSON.stringify(s.validation))}</div>`);
  if (s.usage) parts.push(`<div><b>cost/usage:</b> ${esc(JSON.stringify(s.usage))}</div>`);
  if (s.repairs) parts.push(`<div><b>repairs:</b> ${esc(JSON.stringify(s.repairs))}</div>`);
  if (s.error) parts.push(`<div><b>error:</b> ${esc(s.error)}</div>`);
  if (s.gate) parts.unshift(`<div><b>gate:</b> ${esc(s.gate.decision)} by ${esc(s.gate.by)}` +
    (s.gate.reason ? ` (${esc(s.gate.reason)})` : "") + ` at ${esc(s.gate.at || "")}</div>`);
  if (s.prompt) parts.push(`<div><b>gate asks:</b><pre>${esc(s.prompt)}</pre></div>`);
  if (s.question) parts.push(`<div><b>the agent asks:</b> ${esc(s.question.text)}` +
    (s.question.answer != null ? ` — answered by ${esc(s.question.by)}: ${esc(s.question.answer)}` : "") +
    `</div>`);
  return parts.join("");
}

async function runPage(id){
  $("#app").innerHTML = `<section><h2 id="title">${esc(id)}</h2>
    <div>status: <span id="status"></span> <span id="progress"></span> <span id="meta"></span>
    <button id="cancel">cancel run</button></div></section>
    <section><div id="dag"></div></section>
    <section><table><thead><tr><th>step</th><th>agent</th><th>status</th><th>attempts</th>
    <th>confidence</th><th>duration</th><th></th></tr></thead><tbody id="steps"></tbody></table>
    </section><section id="outputs-box" hidden><h3>Outputs</h3><div id="outputs"></div></section>`;
  $("#cancel").onclick = async () => {
    try { await api(`/v1/runs/${encodeURIComponent(id)}/cancel`, {method: "POST"}); }
    catch (e) { say(e.message); }
  };
  const decide = async (step, what) => {
    const body = {};
    if (what === "reject") { body.reason = prompt("Why reject?") || "rejected"; }
    const field = document.getElementById("gate-input-" + step);
    if (what === "approve" && field) {  // a gate with `input`: JSON, else the text itself
      const text = field.value.trim();
      if (!text) { say("type the gate's input first"); return; }
      try { body.input = JSON.parse(text); } catch (e) { body.input = text; }
    }
    try {
      await api(`/v1/runs/${encodeURIComponent(id)}/steps/${encodeURIComponent(step)}/${what}`,
        {method: "POST", body: body});
      say("");
    } catch (e) { say(e.message); }
  };
  const open = new Set();  // steps whose details the user opened, kept across re-renders
  $("#steps").addEventListener("toggle", (e) => {
    if (e.target.open) open.add(e.target.dataset.step); else open.delete(e.target.dataset.step);
  }, true);
  const refresh = async () => {
    try {
      const run = await api(`/v1/runs/${encodeURIComponent(id)}`);
      $("#status").innerHTML = badge(run.status);
      $("#status").dataset.status = run.status;
      $("#cancel").hidden = ["complete", "failed", "cancelled"].includes(run.status);
      $("#progress").textContent = `${run.progress.done}/${run.progress.total} steps done`;
      $("#meta").textContent = `· ${run.workflow}` + (run.started_by ? ` · started by ${run.started_by}` : "")
        + (run.duration_ms != null ? ` · ${(run.duration_ms / 1000).toFixed(1)} s` : "");
      const svg = await fetch(`/v1/runs/${encodeURIComponent(id)}/dag.svg`,
        {headers: headers(), cache: "no-store"});
      if (svg.ok) $("#dag").innerHTML = await svg.text();
      const typed = {};  // answers being typed survive the re-render
      $("#steps").querySelectorAll("input[id^='answer-text-'], input[id^='gate-input-']").forEach((i) => {
        typed[i.id] = [i.value, document.activeElement === i];
      });
      $("#steps").innerHTML = Object.entries(run.steps).map(([sid, s]) => {
        let buttons = "";
        if (s.status === "waiting_approval") {
          const schema = ((run.plan.steps || {})[sid] || {}).gate_input;
          buttons = (schema ? `<input id="gate-input-${esc(sid)}" size="24"
           title="${esc(JSON.stringify(schema))}" placeholder="input (JSON or text)">` : "")
           + `<button id="approve-${esc(sid)}" data-step="${esc(sid)}" class="approve">Approve</button>
           <button id="reject-${esc(sid)}" data-step="${esc(sid)}" class="reject">Reject</button>`;
        } else if (s.status === "waiting_input" && s.question && s.question.answer == null) {
          buttons = `<div class="ask">${esc(s.question.text)}</div>
           <input id="answer-text-${esc(sid)}" size="24" placeholder="your answer">
           <button id="answer-${esc(sid)}" data-step="${esc(sid)}" class="answer">Answer</button>`;
        }
        return `<tr id="step-${esc(sid)}"><td><details data-step="${esc(sid)}"
          ${open.has(sid) ? "open" : ""}><summary>${esc(sid)}</summary>${stepDetails(s)}</details></td>
          <td>${esc(s.agent)}</td><td>${badge(s.status)}</td><td>${esc(s.attempts)}</td>
          <td>${esc(s.confidence || "")}</td><td>${esc(s.duration_ms == null ? "" :
          (s.duration_ms / 1000).toFixed(1) + " s")}</td><td>${buttons}</td></tr>`;
      }).join("");
      for (const [key, [value, focused]] of Object.entries(typed)) {
        const input = document.getElementById(key);
        if (input) { input.value = value; if (focused) input.focus(); }
      }
      $("#steps").querySelectorAll("button.approve").forEach((b) =>
        b.onclick = () => decide(b.dataset.step, "approve"));
      $("#steps").querySelectorAll("button.reject").forEach((b) =>
        b.onclick = () => decide(b.dataset.step, "reject"));
      $("#steps").querySelectorAll("button.answer").forEach((b) => b.onclick = async () => {
        const text = $("#answer-text-" + CSS.escape(b.dataset.step)).value.trim();
        if (!text) { say("type an answer first"); return; }
        try {
          await api(`/v1/runs/${encodeURIComponent(id)}/steps/${encodeURIComponent(b.dataset.step)}/answer`,
            {method: "POST", body: {text: text}});
          say("");
        } catch (e) { say(e.message); }
      });
      const outputs = Object.entries(run.outputs || {});
      $("#outputs-box").hidden = outputs.length === 0;
      $("#outputs").innerHTML = outputs.map(([k, v]) =>
        `<b>${esc(k)}</b><pre>${esc(v)}</pre>`).join("");
    } catch (e) { say(e.message); }
  };
  await refresh();
  follow(`/v1/runs/${encodeURIComponent(id)}/stream`, debounce(refresh, 100));
}

$("#token").value = token();
$("#save-token").onclick = () => { localStorage.setItem("orchToken", $("#token").value.trim());
  location.reload(); };
api("/v1/whoami").then((w) => { $("#who").textContent = `${w.name} (${w.role})`; })
  .catch((e) => say("set an API token: " + e.message));
const m = location.pathname.match(/^\/runs\/([^/]+)$/);
if (m) runPage(decodeURIComponent(m[1])); else runsPage();
