// The leadscore page: the same REST API as any client (with the same X-API-Key), polled while a view is open.
// Everything it loads comes from the app itself: no CDN, no front-end build.

const KEY_STORAGE = "leadscore.apiKey";
const POLL_MS = { overview: 2000, segments: 5000, lead: 3000, model: 30000 };
const TREND_POINTS = 150; // segment sizes kept per segment while the page is open (5 minutes at 2 s)

let apiKey = localStorage.getItem(KEY_STORAGE) || "";
let timer = null;
let generation = 0; // a view's refresh that finishes after the user moved on is dropped

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey) headers["X-API-Key"] = apiKey;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not JSON: the status text says it
    }
    if (response.status === 401 || response.status === 403) showKeyForm(message);
    throw new ApiError(response.status, message);
  }
  return response;
}

const getJson = async (path, options) => (await api(path, options)).json();

function showKeyForm(problem) {
  $("#key-form").hidden = false;
  $("#key-problem").textContent = problem || "";
  $("#key-input").focus();
}

// ---- formatting ----

const percent = (score) => (score == null ? "–" : `${(score * 100).toFixed(1)}%`);
const number = (n) => new Intl.NumberFormat().format(Math.round(n));

function when(iso) {
  if (!iso) return "–";
  const at = new Date(iso);
  const seconds = (Date.now() - at.getTime()) / 1000;
  if (seconds < 90) return `${Math.max(0, Math.round(seconds))} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return at.toLocaleDateString();
}

const leadLink = (leadId) => el("a", { href: `#lead/${encodeURIComponent(leadId)}`, text: leadId });

// ---- charts (canvas, sized to their box and the screen's pixel ratio) ----

function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = Number(canvas.getAttribute("height")) || 120;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.style.height = `${height}px`;
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  context.font = "11px system-ui, sans-serif";
  return { context, width, height };
}

const style = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

function lineChart(canvas, values, { max = null, color = style("--accent"), axis = true } = {}) {
  const { context, width, height } = prepare(canvas);
  canvas.dataset.points = String(values.length);
  if (values.length < 2) return;
  const top = max ?? Math.max(...values, 1);
  const pad = axis ? 18 : 2;
  const x = (i) => pad + (i * (width - pad - 2)) / (values.length - 1);
  const y = (v) => height - pad - (v / top) * (height - pad - 4);
  context.strokeStyle = color;
  context.lineWidth = 1.5;
  context.beginPath();
  values.forEach((v, i) => (i ? context.lineTo(x(i), y(v)) : context.moveTo(x(i), y(v))));
  context.stroke();
  if (axis) {
    context.fillStyle = style("--muted");
    context.fillText(number(top), 2, 10);
    context.fillText("0", 2, height - pad);
  }
}

function barChart(canvas, counts, edges) {
  const { context, width, height } = prepare(canvas);
  const top = Math.max(...counts, 1);
  const pad = 16;
  const barWidth = (width - 4) / counts.length;
  context.fillStyle = style("--accent");
  counts.forEach((count, i) => {
    const barHeight = (count / top) * (height - pad - 4);
    context.fillRect(2 + i * barWidth + 1, height - pad - barHeight, Math.max(barWidth - 2, 1), barHeight);
  });
  context.fillStyle = style("--muted");
  for (const at of [0, 0.5, 1]) {
    const i = edges.findIndex((edge) => Math.abs(edge - at) < 1e-9);
    if (i >= 0) context.fillText(String(at), Math.min(2 + i * barWidth, width - 12), height - 3);
  }
}

function historyChart(canvas, entries) {
  // entries oldest first: {at, score, segments}
  const { context, width, height } = prepare(canvas);
  canvas.dataset.points = String(entries.length);
  canvas.dataset.changes = "0";
  if (!entries.length) return;
  const pad = 22;
  const times = entries.map((entry) => new Date(entry.at).getTime());
  const first = times[0];
  const span = Math.max(times[times.length - 1] - first, 1);
  const x = (t) => pad + ((t - first) / span) * (width - pad - 8);
  const y = (score) => height - pad - score * (height - pad - 8);
  context.strokeStyle = style("--grid");
  context.fillStyle = style("--muted");
  for (const level of [0, 0.5, 1]) {
    context.beginPath();
    context.moveTo(pad, y(level));
    context.lineTo(width - 4, y(level));
    context.stroke();
    context.fillText(`${level * 100}%`, 0, y(level) + 4);
  }
  let changes = 0;
  context.setLineDash([4, 3]);
  entries.forEach((entry, i) => {
    if (!i) return;
    const before = entries[i - 1].segments;
    const moved = Object.keys(entry.segments).filter((set) => entry.segments[set] !== before[set]);
    if (!moved.length) return;
    changes += 1;
    context.strokeStyle = style("--warn");
    context.beginPath();
    context.moveTo(x(times[i]), 8);
    context.lineTo(x(times[i]), height - pad);
    context.stroke();
    context.fillStyle = style("--warn");
    const label = moved.map((set) => `${set}→${entry.segments[set]}`).join(" ");
    context.fillText(label, Math.min(x(times[i]) + 3, width - context.measureText(label).width - 2), 10 + (changes % 3) * 12);
  });
  context.setLineDash([]);
  canvas.dataset.changes = String(changes);
  context.strokeStyle = style("--accent");
  context.lineWidth = 1.5;
  context.beginPath();
  entries.forEach((entry, i) => (i ? context.lineTo(x(times[i]), y(entry.score)) : context.moveTo(x(times[i]), y(entry.score))));
  context.stroke();
  context.fillStyle = style("--accent");
  entries.forEach((entry, i) => {
    context.beginPath();
    context.arc(x(times[i]), y(entry.score), 2.5, 0, 2 * Math.PI);
    context.fill();
  });
  context.fillStyle = style("--muted");
  context.fillText(new Date(first).toLocaleString(), pad, height - 4);
}

// ---- overview ----

const sizeHistory = new Map();

async function refreshOverview() {
  const [activity, segments, histogram] = await Promise.all([
    getJson("/activity?seconds=60&changes=15"),
    getJson("/segments"),
    getJson("/scores/histogram?bins=20"),
  ]);
  const series = activity.events_per_second.map((second) => second.events);
  const recent = series.slice(-11, -1); // the ten seconds before the current one, which is still counting
  $("#events-rate").textContent = number(recent.reduce((sum, n) => sum + n, 0) / Math.max(recent.length, 1));
  lineChart($("#events-chart"), series);
  $("#histogram-total").textContent = number(histogram.total);
  $("#histogram").dataset.total = String(histogram.total);
  barChart($("#histogram"), histogram.counts, histogram.edges);
  renderSets(segments.sets);
  renderChanges(activity.recent_changes);
}

function renderSets(sets) {
  const container = $("#segment-sets");
  container.replaceChildren();
  for (const set of sets) {
    const total = set.segments.reduce((sum, segment) => sum + segment.size, 0);
    const rows = set.segments.map((segment) => {
      const key = `${set.name}/${segment.name}`;
      const history = sizeHistory.get(key) || [];
      history.push(segment.size);
      if (history.length > TREND_POINTS) history.shift();
      sizeHistory.set(key, history);
      const change = segment.size - history[0];
      const trend = el("canvas", { height: "22", class: "spark", "aria-label": `${key} size trend` });
      const share = total ? (100 * segment.size) / total : 0;
      const bar = el("span", { class: "bar" }, el("span", { style: `width:${share.toFixed(1)}%` }));
      const link = el("a", { href: `#segments/${set.name}/${segment.name}`, text: segment.name, title: segment.description });
      const row = el(
        "div",
        { class: "segment", "data-segment": key },
        link,
        el("span", { class: "size", text: number(segment.size) }),
        bar,
        trend,
        el("span", { class: change > 0 ? "up" : change < 0 ? "down" : "muted", text: change ? `${change > 0 ? "+" : ""}${number(change)}` : "±0" }),
      );
      requestAnimationFrame(() => lineChart(trend, history.length > 1 ? history : [segment.size, segment.size], { axis: false, max: Math.max(...history, 1) }));
      return row;
    });
    container.append(el("div", { class: "set" }, el("h3", { text: set.primary ? `${set.name} (primary)` : set.name }), ...rows));
  }
}

function renderChanges(changes) {
  const body = $("#recent-changes tbody");
  body.replaceChildren(
    ...changes.map((change) =>
      el(
        "tr",
        {},
        el("td", { text: when(change.at) }),
        el("td", {}, leadLink(change.lead_id)),
        el("td", { text: change.segment_set }),
        el("td", { text: `${change.from_segment ?? "–"} → ${change.to_segment}`, title: change.from_segment ? "" : "first placement" }),
        el("td", { text: percent(change.score) }),
        el("td", { text: change.trigger }),
      ),
    ),
  );
}

// ---- segments ----

let segmentSets = null;

async function refreshSegments(setName, segmentName) {
  segmentSets = segmentSets || (await getJson("/segments")).sets;
  const set = segmentSets.find((s) => s.name === setName) || segmentSets.find((s) => s.primary) || segmentSets[0];
  // by default the set's first segment that has leads
  const segment =
    set.segments.find((s) => s.name === segmentName) || set.segments.find((s) => s.size > 0) || set.segments[0];
  fillSelect($("#segment-set"), segmentSets.map((s) => s.name), set.name);
  fillSelect($("#segment-name"), set.segments.map((s) => s.name), segment.name);
  $("#segment-description").textContent = segment.description;
  const path = `/segments/${encodeURIComponent(set.name)}/${encodeURIComponent(segment.name)}/leads`;
  $("#export-csv").onclick = () => exportCsv(`${path}.csv`, `${set.name}-${segment.name}.csv`);
  const page = await getJson(`${path}?limit=50`);
  const ids = page.leads.map((lead) => lead.lead_id);
  const details = ids.length
    ? await getJson("/leads/batch-get", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ lead_ids: ids }) })
    : { leads: [] };
  const lastActivity = new Map(details.leads.map((lead) => [lead.lead_id, lead.last_event_at]));
  if (!page.leads.length) {
    $("#top-leads tbody").replaceChildren(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No leads in this segment now." })));
    return;
  }
  $("#top-leads tbody").replaceChildren(
    ...page.leads.map((lead, i) =>
      el("tr", {}, el("td", { text: String(i + 1) }), el("td", {}, leadLink(lead.lead_id)), el("td", { text: percent(lead.score) }), el("td", { text: when(lastActivity.get(lead.lead_id)) })),
    ),
  );
}

function fillSelect(select, names, chosen) {
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  }
  select.value = chosen;
}

async function exportCsv(path, filename) {
  const blob = await (await api(path)).blob();
  const link = el("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ---- lead ----

async function refreshLead(leadId) {
  $("#lead-input").value = leadId;
  const encoded = encodeURIComponent(leadId);
  let lead;
  let history;
  try {
    [lead, history] = await Promise.all([getJson(`/leads/${encoded}`), getJson(`/leads/${encoded}/history?limit=200`)]);
  } catch (error) {
    if (error.status !== 404) throw error;
    $("#lead-card").hidden = true;
    $("#lead-problem").textContent = error.message;
    return;
  }
  $("#lead-problem").textContent = "";
  $("#lead-card").hidden = false;
  $("#lead-id").textContent = lead.lead_id;
  $("#lead-score").textContent = percent(lead.score);
  $("#lead-segments").replaceChildren(...Object.entries(lead.segments).map(([set, segment]) => el("span", { class: "chip", text: `${set}: ${segment}` })));
  $("#lead-times").textContent = `${lead.status} · last event ${when(lead.last_event_at)} · first event ${when(lead.first_event_at)} · model ${lead.model_version}`;
  $("#lead-reasons").replaceChildren(
    ...(lead.reasons || []).map((reason) => el("li", { class: reason.contribution >= 0 ? "up" : "down", text: reason.sentence })),
  );
  const counts = Object.entries(lead.event_counts).sort((a, b) => b[1] - a[1]);
  $("#lead-events tbody").replaceChildren(...counts.map(([type, count]) => el("tr", {}, el("td", { text: type }), el("td", { text: number(count) }))));
  historyChart($("#history-chart"), [...history.entries].reverse());
}

// ---- model ----

async function refreshModel() {
  const model = await getJson("/model");
  $("#model-version").textContent = `Model ${model.version}`;
  const activated = model.activated_at ? ` · activated ${when(model.activated_at)} by ${model.activated_by}` : "";
  $("#model-times").textContent = `trained ${new Date(model.trained_at).toLocaleString()}${activated}`;
  const shown = ["roc_auc", "pr_auc", "top_decile_lift", "log_loss", "brier", "ece"];
  const metrics = Object.entries(model.metrics).filter(([name]) => shown.includes(name));
  $("#model-metrics tbody").replaceChildren(...metrics.map(([name, value]) => el("tr", {}, el("th", { text: name }), el("td", { text: value == null ? "–" : value.toFixed(4) }))));
  const report = $("#model-report");
  if (report.dataset.version === model.version) return;
  if (!model.files.includes("report.md")) {
    report.replaceChildren(el("p", { class: "muted", text: "This model was registered without an evaluation report." }));
    report.dataset.version = model.version;
    return;
  }
  const markdown = await (await api("/model/files/report.md")).text();
  report.replaceChildren(...renderMarkdown(markdown));
  for (const image of report.querySelectorAll("img[data-file]")) {
    const blob = await (await api(`/model/files/${encodeURIComponent(image.dataset.file)}`)).blob();
    image.src = URL.createObjectURL(blob);
  }
  report.dataset.version = model.version;
}

// The report's markdown: headings, paragraphs, lists, tables, images, **bold** and `code` (what `leadscore train`
// writes). Built as DOM nodes, never as HTML strings: the text stays text.
function renderMarkdown(markdown) {
  const blocks = [];
  const lines = markdown.split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
    } else if (/^#{1,6} /.test(line)) {
      const level = Math.min(line.match(/^#+/)[0].length + 1, 6);
      blocks.push(el(`h${level}`, {}, ...inline(line.replace(/^#+ /, ""))));
      i += 1;
    } else if (line.startsWith("|")) {
      const rows = [];
      while (i < lines.length && lines[i].startsWith("|")) rows.push(lines[i++]);
      const cells = (row) => row.replace(/^\||\|$/g, "").split("|").map((cell) => cell.trim());
      const [head, , ...body] = rows;
      blocks.push(
        el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {}, ...cells(head).map((c) => el("th", {}, ...inline(c))))), el("tbody", {}, ...body.map((row) => el("tr", {}, ...cells(row).map((c) => el("td", {}, ...inline(c)))))))),
      );
    } else if (/^[-*] /.test(line)) {
      const items = [];
      while (i < lines.length && /^[-*] /.test(lines[i])) items.push(el("li", {}, ...inline(lines[i++].slice(2))));
      blocks.push(el("ul", {}, ...items));
    } else if (/^!\[/.test(line)) {
      const [, alt, file] = line.match(/^!\[([^\]]*)\]\(([^)]+)\)/) || [];
      if (file) blocks.push(el("figure", {}, el("img", { alt, "data-file": file }), el("figcaption", { text: alt })));
      i += 1;
    } else {
      const paragraph = [];
      while (i < lines.length && lines[i].trim() && !/^(#|\||[-*] |!\[)/.test(lines[i])) paragraph.push(lines[i++]);
      blocks.push(el("p", {}, ...inline(paragraph.join(" "))));
    }
  }
  return blocks;
}

function inline(text) {
  return text.split(/(\*\*[^*]+\*\*|`[^`]+`|\*[^*]+\*)/).filter(Boolean).map((part) => {
    if (part.startsWith("**")) return el("strong", { text: part.slice(2, -2) });
    if (part.startsWith("`")) return el("code", { text: part.slice(1, -1) });
    if (part.startsWith("*") && part.length > 2) return el("em", { text: part.slice(1, -1) });
    return document.createTextNode(part);
  });
}

// ---- views and polling ----

const views = {
  overview: () => refreshOverview(),
  segments: ([set, segment]) => refreshSegments(set, segment),
  lead: ([leadId]) => (leadId ? refreshLead(leadId) : Promise.resolve()),
  model: () => refreshModel(),
};

function route() {
  const [name, ...rest] = location.hash.slice(1).split("/").map(decodeURIComponent);
  const view = name in views ? name : "overview";
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.view === view);
  clearTimeout(timer);
  const mine = ++generation;
  const tick = async () => {
    try {
      await views[view](rest);
      if (mine === generation) $("#status").textContent = `updated ${new Date().toLocaleTimeString()}`;
      $("#status").classList.remove("failing");
    } catch (error) {
      $("#status").textContent = error.message;
      $("#status").classList.add("failing");
    }
    if (mine === generation) timer = setTimeout(tick, POLL_MS[view]);
  };
  tick();
}

$("#key-button").addEventListener("click", () => showKeyForm(""));
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("#key-input").value.trim();
  localStorage.setItem(KEY_STORAGE, apiKey);
  $("#key-form").hidden = true;
  route();
});
$("#lead-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const leadId = $("#lead-input").value.trim();
  if (leadId) location.hash = `#lead/${encodeURIComponent(leadId)}`;
});
$("#segment-set").addEventListener("change", (event) => (location.hash = `#segments/${event.target.value}`));
$("#segment-name").addEventListener("change", (event) => (location.hash = `#segments/${$("#segment-set").value}/${event.target.value}`));
window.addEventListener("hashchange", route);
route();
