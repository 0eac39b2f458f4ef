// The raftkv dashboard: polls /api/v1/dashboard once a second and draws
// what changed since the previous answer. Counters are cumulative per
// member, so rates and latency percentiles come from differences; a member
// whose counters went back (it restarted) counts from zero.
"use strict";

const POLL_MS = 1000;
const KEEP_POINTS = 300;
const TOKEN_KEY = "raftkv-token";

const view = {
  samples: 0,
  previous: null,
  data: [[], [], [], [], [], [], []], // time, writes/s, reads/s, write p50, write p99, read p50, read p99
  last: null,
};
window.raftkvDashboard = view;

const $ = (id) => document.getElementById(id);

function chart(element, series, yLabel) {
  const options = {
    width: Math.max(360, element.clientWidth),
    height: 240,
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2, spanGaps: true }))],
    axes: [{}, { label: yLabel, size: 60 }],
    scales: { x: { time: true } },
    legend: { live: true },
  };
  return new uPlot(options, [[], ...series.map(() => [])], element);
}

const rateChart = chart($("rate-chart"), [["writes/s", "#d9480f"], ["reads/s", "#1c7ed6"]], "per second");
const latencyChart = chart(
  $("latency-chart"),
  [["write p50", "#f08c00"], ["write p99", "#c92a2a"], ["read p50", "#4dabf7"], ["read p99", "#1864ab"]],
  "ms",
);
window.addEventListener("resize", () => {
  for (const [c, id] of [[rateChart, "rate-chart"], [latencyChart, "latency-chart"]]) {
    c.setSize({ width: Math.max(360, $(id).clientWidth), height: 240 });
  }
});

// The change of a cumulative counter; a counter that went back restarted.
function delta(now, before) {
  return now >= before ? now - before : now;
}

// The q-quantile (0..1) of latencies counted per bucket, interpolated
// within its bucket; in ms. `null` without answers.
function quantile(buckets, bounds, q) {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    if (buckets[i] > 0 && seen + buckets[i] >= rank) {
      const low = i === 0 ? 0 : bounds[i - 1];
      const high = i < bounds.length ? bounds[i] : bounds[bounds.length - 1] * 2;
      return (low + ((rank - seen) / buckets[i]) * (high - low)) / 1000;
    }
    seen += buckets[i];
  }
  return bounds[bounds.length - 1] / 1000;
}

// Per-member changes of one kind of request between two answers.
function changes(now, before, kind, seconds) {
  const perMember = new Map();
  const buckets = [];
  let done = 0;
  for (const member of now.members) {
    const current = member[kind];
    const old = before && before.members.find((m) => m.id === member.id);
    if (!current || !old || !old[kind]) continue;
    const count = delta(current.done, old[kind].done);
    perMember.set(member.id, count / seconds);
    done += count;
    current.buckets.forEach((n, i) => {
      buckets[i] = (buckets[i] || 0) + delta(n, old[kind].buckets[i] || 0);
    });
  }
  return { rate: done / seconds, perMember, buckets };
}

function text(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function renderMembers(data, reads, writes) {
  const body = $("members").querySelector("tbody");
  body.replaceChildren();
  for (const m of data.members) {
    const row = document.createElement("tr");
    row.dataset.id = m.id;
    if (m.leader) row.className = "leader";
    const health = !m.reachable ? ["unreachable", "down"] : m.serving ? ["serving", "ok"] : ["not serving", "down"];
    const cells = [
      [m.id],
      [m.reachable ? m.role : "?"],
      [m.suffrage],
      [health[0], health[1]],
      [m.term, "num"],
      [m.commit_index, "num"],
      [m.applied_index, "num"],
      [m.lag, "num"],
      [m.last_contact_ms === null || m.last_contact_ms === undefined ? null : `${m.last_contact_ms} ms`, "num"],
      [reads.perMember.has(m.id) ? reads.perMember.get(m.id).toFixed(0) : null, "num"],
      [writes.perMember.has(m.id) ? writes.perMember.get(m.id).toFixed(0) : null, "num"],
      [m.http_addr || m.raft_addr],
    ];
    for (const [value, cls] of cells) {
      const cell = document.createElement("td");
      cell.textContent = text(value);
      if (cls) cell.className = cls;
      if (!m.reachable && m.error && cls === "down") cell.title = m.error;
      row.appendChild(cell);
    }
    body.appendChild(row);
  }
}

function renderLeadership(data) {
  $("viewer").textContent = data.node;
  const list = $("leadership");
  list.replaceChildren();
  for (const event of [...data.leadership].reverse()) {
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = new Date(event.unix_ms).toLocaleTimeString();
    item.appendChild(time);
    item.appendChild(
      document.createTextNode(
        event.leader === null ? `term ${event.term}: no leader (election)` : `term ${event.term}: node ${event.leader} leads`,
      ),
    );
    list.appendChild(item);
  }
}

function render(data) {
  // An answer older than the one shown (polls overlapped) is dropped.
  if (view.previous && data.unix_ms <= view.previous.unix_ms) return;
  const leader = data.leader === null ? "no leader known" : `leader: node ${data.leader}`;
  $("summary").textContent = `${leader} · term ${data.term} · ${data.members.length} members · viewed from node ${data.node}`;
  const before = view.previous;
  const seconds = before ? Math.max(0.001, (data.unix_ms - before.unix_ms) / 1000) : 1;
  const reads = changes(data, before, "reads", seconds);
  const writes = changes(data, before, "writes", seconds);
  renderMembers(data, reads, writes);
  renderLeadership(data);
  if (before) {
    const bounds = data.bucket_bounds_us;
    const point = [
      data.unix_ms / 1000,
      writes.rate,
      reads.rate,
      quantile(writes.buckets, bounds, 0.5),
      quantile(writes.buckets, bounds, 0.99),
      quantile(reads.buckets, bounds, 0.5),
      quantile(reads.buckets, bounds, 0.99),
    ];
    point.forEach((value, i) => {
      view.data[i].push(value);
      if (view.data[i].length > KEEP_POINTS) view.data[i].shift();
    });
    view.samples += 1;
    view.last = { writes: writes.rate, reads: reads.rate };
    rateChart.setData([view.data[0], view.data[1], view.data[2]]);
    latencyChart.setData([view.data[0], view.data[3], view.data[4], view.data[5], view.data[6]]);
    $("samples").textContent = view.samples;
  }
  view.previous = data;
  $("updated").textContent = `updated ${new Date(data.unix_ms).toLocaleTimeString()}`;
}

function problem(message) {
  const box = $("problem");
  box.hidden = message === null;
  box.textContent = message || "";
}

async function poll() {
  const headers = { accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = `Bearer ${token}`;
  try {
    const response = await fetch("/api/v1/dashboard", { headers, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      $("login").hidden = false;
      problem(response.status === 401 ? "a token is needed" : "this token may not read");
      return;
    }
    const body = await response.json();
    if (!response.ok) {
      problem(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`);
      return;
    }
    $("login").hidden = true;
    problem(null);
    render(body);
  } catch (error) {
    problem(`this node does not answer: ${error}`);
  }
}

// The next poll starts a second after the last one ended: polls never overlap.
async function pollForever() {
  await poll();
  setTimeout(pollForever, POLL_MS);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  poll();
});

pollForever();
