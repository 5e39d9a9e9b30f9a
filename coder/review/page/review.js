// The review page: one note of the queue at a time. Every value from the server is put in the page
// with textContent (never as HTML), and every decision is sent at once; the status line says when it is saved.
"use strict";

const state = { position: 0, note: null, column: null, focus: 0, results: [], picked: -1, commentTimer: null };
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function api(method, path, body) {
  const options = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(answer.error || answer.detail || response.statusText);
  return answer;
}

function say(text, failed) {
  const status = $("status");
  status.textContent = text;
  status.className = failed ? "failed" : "";
}

async function guarded(action, done) {
  try {
    await action();
    if (done) say(done, false);
  } catch (error) {
    say("not saved: " + error.message, true);
  }
}

// --- a note ------------------------------------------------------------------------------------------

async function open(position) {
  const note = await api("GET", "/api/notes/" + position);
  state.position = position;
  state.note = note;
  state.focus = Math.min(state.focus, Math.max(note.codes.length - 1, 0));
  const columns = Object.keys(note.columns);
  if (!columns.includes(state.column)) {
    const withEvidence = columns.find((c) => note.codes.some((code) => code.evidence && code.evidence.column === c));
    state.column = withEvidence || columns[0];
  }
  history.replaceState(null, "", "#" + (position + 1));
  render();
}

function render() {
  const note = state.note;
  $("position").textContent = "Note " + (note.position + 1) + " of " + note.total;
  $("counts").textContent = note.reviewed + " reviewed · reviewer " + note.reviewer;
  $("progress").max = note.total;
  $("progress").value = note.reviewed;
  $("note-id").textContent = note.note_id;
  $("reviewed-flag").hidden = !note.reviewed;
  $("previous").disabled = note.position === 0;
  renderColumns();
  renderText();
  renderCodes();
  renderAdded();
  if (document.activeElement !== $("comment")) $("comment").value = note.comment;
}

function renderColumns() {
  const group = $("columns");
  group.replaceChildren();
  const columns = Object.keys(state.note.columns);
  if (columns.length < 2) return;
  for (const column of columns) {
    const button = el("button", column === state.column ? "column chosen" : "column", column);
    button.type = "button";
    button.title = "Show this column (t)";
    button.addEventListener("click", () => { state.column = column; render(); });
    group.append(button);
  }
}

function renderText() {
  const article = $("note-text");
  article.replaceChildren();
  $("evidence-codes").hidden = true;
  for (const segment of state.note.columns[state.column]) {
    if (!segment.codes.length) {
      article.append(document.createTextNode(segment.text));
      continue;
    }
    const mark = el("mark", "evidence", segment.text);
    mark.dataset.codes = segment.codes.join(" ");
    if (segment.codes.includes(state.focus)) mark.classList.add("focused");
    mark.title = segment.codes.map((i) => state.note.codes[i].code).join(", ");
    mark.addEventListener("click", () => showCodesOf(segment.codes));
    article.append(mark);
  }
}

function showCodesOf(indices) {
  const box = $("evidence-codes");
  box.replaceChildren(el("span", "label", "Evidence of"));
  for (const i of indices) {
    const code = state.note.codes[i];
    const link = el("button", "code-link", code.code + " " + (code.description || ""));
    link.type = "button";
    link.addEventListener("click", () => focusCode(i, true));
    box.append(link);
  }
  box.hidden = false;
  focusCode(indices[0], false);
}

function decisionShown(code) {
  if (code.decision) return code.decision;
  return code.above_threshold ? "proposed: accept" : "proposed: reject";
}

function renderCodes() {
  const systems = $("systems");
  systems.replaceChildren();
  const bySystem = new Map();
  state.note.codes.forEach((code, i) => {
    if (!bySystem.has(code.system)) bySystem.set(code.system, []);
    bySystem.get(code.system).push([code, i]);
  });
  if (!bySystem.size) systems.append(el("p", "empty", "No suggested code for this note."));
  for (const [system, codes] of bySystem) {
    systems.append(el("h2", null, system));
    const list = el("ul", "codes");
    for (const [code, i] of codes) list.append(codeRow(code, i));
    systems.append(list);
  }
}

function codeRow(code, i) {
  const state_ = code.decision || (code.above_threshold ? "proposed-accept" : "proposed-reject");
  const row = el("li", "code " + state_ + (i === state.focus ? " focused" : ""));
  row.dataset.index = i;
  row.tabIndex = -1;
  const head = el("div", "code-head");
  head.append(el("span", "rank", "#" + code.rank), el("strong", "code-name", code.code),
              el("span", "score", (code.score * 100).toFixed(1) + "%"), el("span", "source", code.source || ""));
  const text = el("div", "description", code.description || "");
  const actions = el("div", "actions");
  actions.append(el("span", "decision", decisionShown(code)));
  for (const [label, decision, key] of [["Accept", "accepted", "a"], ["Reject", "rejected", "r"]]) {
    const button = el("button", "decide " + decision, label);
    button.type = "button";
    button.title = label + " (" + key + ")";
    button.addEventListener("click", (event) => { event.stopPropagation(); focusCode(i, false); decide(code, decision); });
    actions.append(button);
  }
  if (!code.evidence) actions.append(el("span", "no-evidence", "no evidence span"));
  row.append(head, text, actions);
  row.addEventListener("click", () => focusCode(i, true));
  return row;
}

function renderAdded() {
  const list = $("added");
  list.replaceChildren();
  if (!state.note.added.length) list.append(el("li", "empty", "None."));
  for (const code of state.note.added) {
    const row = el("li", "code added");
    const head = el("div", "code-head");
    head.append(el("span", "rank", code.system), el("strong", "code-name", code.code));
    const remove = el("button", "remove", "Remove");
    remove.type = "button";
    remove.addEventListener("click", () => send({ system: code.system, code: code.code, decision: null }, "removed " + code.code));
    row.append(head, el("div", "description", code.description), remove);
    list.append(row);
  }
}

function focusCode(i, scroll) {
  if (!state.note.codes.length) return;
  state.focus = Math.max(0, Math.min(i, state.note.codes.length - 1));
  const code = state.note.codes[state.focus];
  if (code.evidence && code.evidence.column !== state.column) state.column = code.evidence.column;
  renderColumns();
  renderText();
  renderCodes();
  const row = document.querySelector('li.code[data-index="' + state.focus + '"]');
  if (row) row.scrollIntoView({ block: "nearest" });
  if (scroll) {
    const mark = document.querySelector("mark.evidence.focused");
    if (mark) {
      mark.scrollIntoView({ block: "center" });
      mark.classList.add("flash");
    }
  }
}

// --- decisions ---------------------------------------------------------------------------------------

async function send(body, done) {
  await guarded(async () => {
    state.note = await api("POST", "/api/notes/" + state.position + "/decisions", body);
    render();
  }, "saved: " + done);
}

function decide(code, decision) {
  return send({ system: code.system, code: code.code, decision }, decision + " " + code.code);
}

function decideFocused(decision) {
  const code = state.note && state.note.codes[state.focus];
  if (code) return decision ? decide(code, decision) : send({ system: code.system, code: code.code, decision: null }, "took back " + code.code);
  if (decision === null && state.note && state.note.added.length) {
    const added = state.note.added[state.note.added.length - 1];
    return send({ system: added.system, code: added.code, decision: null }, "removed " + added.code);
  }
}

async function saveComment() {
  clearTimeout(state.commentTimer);
  state.commentTimer = null;
  const text = $("comment").value;
  if (!state.note || text === state.note.comment) return;
  const position = state.position;
  await guarded(async () => {
    await api("PUT", "/api/notes/" + position + "/comment", { comment: text });
    if (state.note && state.note.position === position) state.note.comment = text;
  }, "saved: comment");
}

async function next() {
  await saveComment();
  await guarded(async () => {
    const progress = await api("POST", "/api/notes/" + state.position + "/complete");
    const position = Math.min(state.position + 1, progress.total - 1);
    state.focus = 0;
    await open(position);
    if (progress.reviewed === progress.total) say("saved: every note of the queue is reviewed", false);
  }, "saved: note marked reviewed");
}

async function previous() {
  if (state.position === 0) return;
  await saveComment();
  state.focus = 0;
  await guarded(() => open(state.position - 1));
}

// --- search ------------------------------------------------------------------------------------------

async function search() {
  const query = $("search").value.trim();
  const list = $("results");
  if (!query) {
    state.results = [];
    list.replaceChildren();
    return;
  }
  const found = await api("GET", "/api/codes?q=" + encodeURIComponent(query));
  if ($("search").value.trim() !== query) return;  // the reviewer typed on meanwhile
  state.results = found;
  state.picked = found.length ? 0 : -1;
  renderResults();
}

function renderResults() {
  const list = $("results");
  list.replaceChildren();
  if (!state.results.length) list.append(el("li", "empty", "No assignable code found."));
  state.results.forEach((code, i) => {
    const row = el("li", "result" + (i === state.picked ? " picked" : ""));
    row.setAttribute("role", "option");
    const head = el("div", "code-head");
    head.append(el("span", "rank", code.system), el("strong", "code-name", code.code), el("span", "status", code.status));
    row.append(head, el("div", "description", code.description));
    row.addEventListener("click", () => add(code));
    list.append(row);
  });
}

function add(code) {
  $("search").value = "";
  state.results = [];
  $("results").replaceChildren();
  return send({ system: code.system, code: code.code, decision: "added" }, "added " + code.code);
}

// --- keyboard ----------------------------------------------------------------------------------------

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target === $("search")) {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      state.picked = Math.max(0, Math.min(state.results.length - 1, state.picked + step));
      renderResults();
    } else if (event.key === "Enter" && state.picked >= 0 && state.results[state.picked]) {
      event.preventDefault();
      add(state.results[state.picked]);
    } else if (event.key === "Escape") {
      target.blur();
    }
    return;
  }
  if (target === $("comment")) {
    if (event.key === "Escape") { saveComment(); target.blur(); }
    return;
  }
  if (target.tagName === "INPUT" || target.tagName === "TEXTAREA") return;
  const actions = {
    "n": next, "ArrowRight": next, "p": previous, "ArrowLeft": previous,
    "j": () => focusCode(state.focus + 1, true), "ArrowDown": () => focusCode(state.focus + 1, true),
    "k": () => focusCode(state.focus - 1, true), "ArrowUp": () => focusCode(state.focus - 1, true),
    "a": () => decideFocused("accepted"), "r": () => decideFocused("rejected"), "u": () => decideFocused(null),
    "e": () => focusCode(state.focus, true), "/": () => $("search").focus(), "c": () => $("comment").focus(),
    "t": switchColumn,
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

function switchColumn() {
  const columns = Object.keys(state.note.columns);
  state.column = columns[(columns.indexOf(state.column) + 1) % columns.length];
  render();
}

async function start() {
  $("next").addEventListener("click", next);
  $("previous").addEventListener("click", previous);
  let typing = null;
  $("search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => guarded(search), 120);
  });
  $("comment").addEventListener("input", () => {
    clearTimeout(state.commentTimer);
    state.commentTimer = setTimeout(saveComment, 600);
  });
  $("comment").addEventListener("blur", saveComment);
  document.addEventListener("keydown", onKey);
  await guarded(async () => {
    const progress = await api("GET", "/api/progress");
    const asked = parseInt(location.hash.slice(1), 10);
    const position = asked >= 1 && asked <= progress.total ? asked - 1 : progress.resume;
    await open(position);
  });
}

document.addEventListener("DOMContentLoaded", start);
