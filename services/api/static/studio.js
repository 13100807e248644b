// Studio's page: sign in with a token, generate, and watch every generation live.
// Plain script, no build step. The token lives in sessionStorage and travels only in the Authorization header;
// the per-user event stream is read with fetch because EventSource cannot send that header.
"use strict";

const TOKEN_KEY = "studio.token";
const PAGE_SIZE = 24;
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const stage = (status) => (TERMINAL.has(status) ? 2 : status === "processing" ? 1 : 0);
const LABELS = { queued: "Queued", processing: "Processing", succeeded: "Ready", failed: "Failed", canceled: "Canceled" };
// The server comments every 15 s on an idle stream; this much silence means the connection is gone.
const STREAM_SILENCE_MS = 40000;
const STREAM_RETRY_MAX_MS = 15000;

const $ = (id) => document.getElementById(id);
const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

const state = {
  token: null,
  config: { models: [], defaultModel: "", maxPromptLength: 500 },
  schemas: new Map(), // model -> its input schema, from GET /api/models
  uploads: new Map(), // File -> its `upload:<id>` reference: a retry does not upload the same file again
  cursor: null,
  quota: null,
  cards: new Map(), // generation id -> { element, status }
  deleted: new Set(), // ids deleted here: an event still on its way must not bring a card back
  stream: null, // AbortController of the running stream loop
  pending: null, // { body, key }: a create whose answer never came is retried with the same Idempotency-Key
  quotaTimer: 0,
};

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message || `HTTP ${status}`);
    this.status = status; // 0: the network, not Studio, failed
    this.detail = message;
    this.retryAfter = retryAfter;
  }
}

// `raw`: a body sent as it is (a file), with its own type, instead of JSON.
async function api(path, { method = "GET", body, raw, headers = {}, auth = true } = {}) {
  const sent = { ...headers };
  if (auth) sent.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  if (raw !== undefined) sent["Content-Type"] = raw.type || "application/octet-stream";
  let response;
  try {
    const payload = raw ?? (body && JSON.stringify(body));
    response = await fetch(path, { method, headers: sent, cache: "no-store", body: payload });
  } catch {
    throw new ApiError(0, "");
  }
  if (response.status === 204) return null;
  if (response.ok) return response.json();
  let message = "";
  try {
    const error = (await response.json()).error;
    if (typeof error === "string") message = error;
  } catch {
    // Not JSON (a proxy's page, say): the status alone tells the story.
  }
  throw new ApiError(response.status, message, response.headers.get("Retry-After"));
}

function seconds(retryAfter) {
  const n = Number.parseInt(retryAfter ?? "", 10);
  return Number.isFinite(n) && n > 0 ? `${n} second${n === 1 ? "" : "s"}` : "a few seconds";
}

function clause(text) {
  const trimmed = (text || "").trim().replace(/[.!]+$/, "");
  return trimmed ? trimmed.charAt(0).toLowerCase() + trimmed.slice(1) : "";
}

// Every refusal as a sentence a person can act on; the API's own message only ever inside one.
function sentence(error, action) {
  const { status, detail } = error;
  if (status === 0) return "Studio can't be reached right now. Check your connection, then try again.";
  if (status === 401) return "Your sign-in is no longer valid: the token is missing, expired or not accepted. Sign in again with a new token.";
  if (status === 429) {
    const held = state.quota ? `${state.quota} images in progress, the most your quota allows` : "as many images in progress as your quota allows";
    return `You already have ${held}. Wait for one to finish or cancel one, then try again.`;
  }
  if (status === 503 && action === "delete") {
    return `The image can't be deleted right now: its storage is unavailable, and nothing was deleted. Try again in ${seconds(error.retryAfter)}.`;
  }
  if (status === 409 && action === "delete") return "That image is still in progress: cancel it first, then delete it.";
  if (status === 503) return `Studio is busy right now: the image service asked it to slow down. Try again in ${seconds(error.retryAfter)}.`;
  if (status === 502) return detail ? `The image service refused this request: ${clause(detail)}.` : "The image service refused this request. Try again later.";
  if (action === "upload" && status === 400) return "The reference image must be a PNG, JPEG or WebP file.";
  if (action === "upload" && status === 413) return "The reference image is too large; pick a smaller file.";
  if (status === 400 && /^Invalid input/.test(detail)) {
    return `The model does not accept these options: ${clause(detail.replace(/^Invalid input:\s*/, ""))}.`;
  }
  if (status === 400 && /prompt/i.test(detail)) return `Write a prompt of 1 to ${state.config.maxPromptLength} characters.`;
  if (status === 400 && /model/i.test(detail)) return "That model is not available; pick one from the list.";
  if (status === 413) return "That request is too large; shorten the prompt.";
  if (status === 404) return "That image no longer exists, or it is not yours.";
  if (status === 409 && action === "cancel") {
    return /submitted/i.test(detail) ? "That image is still being submitted; try to cancel it again in a moment." : "That image already finished, so there is nothing to cancel.";
  }
  if (status >= 500) return `Studio had a problem on its side (error ${status}). Try again in a moment.`;
  return `Studio refused this request (error ${status})${detail ? `: ${clause(detail)}` : ""}.`;
}

function notify(text) {
  const notice = $("notice");
  notice.textContent = text;
  notice.hidden = !text;
}

function announce(text) {
  $("announcer").textContent = text;
}

async function failed(error, action) {
  if (error.status === 401) {
    signOut(sentence(error, action));
    return;
  }
  if (error.status === 429 && !state.quota) {
    // A refusal may come before the debounced quota read: ask now, so the sentence can say how many.
    try {
      state.quota = (await api("/api/me")).quota;
    } catch (_) {
      // the sentence without the number
    }
  }
  notify(sentence(error, action));
}

// ---- cards ----

function newCard(generation) {
  const element = $("card-template").content.firstElementChild.cloneNode(true);
  element.dataset.id = generation.id;
  element.querySelector("article").setAttribute("aria-label", generation.prompt);
  element.querySelector(".prompt").textContent = generation.prompt;
  element.querySelector(".model").textContent = generation.model;
  const time = element.querySelector("time");
  time.dateTime = generation.createdAt;
  time.textContent = when.format(new Date(generation.createdAt));
  const named = generation.prompt.length > 60 ? `${generation.prompt.slice(0, 60)}…` : generation.prompt;
  element.querySelector(".cancel").setAttribute("aria-label", `Cancel “${named}”`);
  element.querySelector(".open").setAttribute("aria-label", `Open the image of “${named}”`);
  element.querySelector(".delete").setAttribute("aria-label", `Delete “${named}”`);
  const asked = Object.entries(generation.input || {}).map(([name, value]) =>
    typeof value === "string" && value.startsWith("upload:") ? `${name}: uploaded image` : `${name} ${JSON.stringify(value)}`,
  );
  element.querySelector(".asked").textContent = asked.join(" · ");
  element.querySelector(".asked").hidden = asked.length === 0;
  element.querySelector(".cancel").addEventListener("click", () => cancel(generation.id, element));
  element.querySelector(".delete").addEventListener("click", () => remove(generation, element));
  return { element, status: null, createdAt: Date.parse(generation.createdAt) };
}

function render(card, generation) {
  const { element } = card;
  const previous = card.status;
  card.status = generation.status;
  element.dataset.status = generation.status;
  element.querySelector(".badge").textContent = LABELS[generation.status] || generation.status;
  element.querySelector(".state").textContent = `${LABELS[generation.status] || generation.status}…`;
  element.querySelector(".cancel").hidden = TERMINAL.has(generation.status);
  element.querySelector(".delete").hidden = !TERMINAL.has(generation.status);
  const error = element.querySelector(".error");
  error.textContent = generation.error || "";
  error.hidden = !generation.error;
  if (generation.status === "succeeded" && generation.outputUrl) {
    showImages(element, generation);
    const open = element.querySelector(".open");
    open.href = generation.outputUrl;
    open.hidden = false;
  } else if (TERMINAL.has(generation.status)) {
    element.querySelector(".spinner")?.remove();
    element.querySelector(".state").textContent = LABELS[generation.status];
  }
  if (generation.webhook && previous !== generation.status) refreshDeliveries(card, generation);
  if (previous && previous !== generation.status) {
    const what = `“${generation.prompt.slice(0, 60)}”`;
    const news = {
      processing: `${what} is processing.`,
      succeeded: `${what} is ready.`,
      failed: `${what} failed: ${generation.error || "no reason given"}.`,
      canceled: `${what} was canceled.`,
    };
    if (news[generation.status]) announce(news[generation.status]);
  }
}

// Every image of a generation; several share the card's square, each a link to itself.
function showImages(element, generation) {
  const urls = generation.outputUrls?.length ? generation.outputUrls : [generation.outputUrl];
  const input = generation.input || {};
  const named = generation.prompt.length > 60 ? `${generation.prompt.slice(0, 60)}…` : generation.prompt;
  const frame = element.querySelector(".frame");
  frame.classList.toggle("multi", urls.length > 1);
  frame.replaceChildren(
    ...urls.map((url, index) => {
      const image = document.createElement("img");
      image.alt = urls.length > 1 ? `${generation.prompt} (image ${index + 1} of ${urls.length})` : generation.prompt;
      image.decoding = "async";
      image.width = Number.isInteger(input.width) ? input.width : 1024;
      image.height = Number.isInteger(input.height) ? input.height : 1024;
      image.src = url;
      if (urls.length === 1) return image;
      const link = document.createElement("a");
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.setAttribute("aria-label", `Open image ${index + 1} of ${urls.length} of “${named}”`);
      link.append(image);
      return link;
    }),
  );
}

// ---- webhook deliveries ----

const DELIVERY_POLL_MS = 2000;
const EVENT_LABELS = { start: "Start", completed: "Completed" };

function describeDelivery(delivery) {
  const parts = [`${EVENT_LABELS[delivery.event] || delivery.event}: ${delivery.status}`];
  parts.push(delivery.attempts === 1 ? "1 attempt" : `${delivery.attempts} attempts`);
  if (delivery.lastStatusCode !== null) parts.push(`HTTP ${delivery.lastStatusCode}`);
  else if (delivery.lastError) parts.push(delivery.lastError);
  return parts.join(" · ");
}

// A generation's deliveries on its card (status, attempts, last answer), read again while one is pending
// or the one that reports its end is still to be written.
async function refreshDeliveries(card, generation) {
  clearTimeout(card.deliveriesTimer);
  let page;
  try {
    page = await api(`/api/predictions/${encodeURIComponent(generation.id)}/deliveries`);
  } catch {
    page = null; // shown again at the next read; the card itself is what matters
  }
  if (page) {
    const box = card.element.querySelector(".deliveries");
    box.querySelector("ul").replaceChildren(
      ...page.items.map((delivery) => {
        const item = document.createElement("li");
        item.dataset.status = delivery.status;
        item.textContent = describeDelivery(delivery);
        return item;
      }),
    );
    box.hidden = page.items.length === 0;
  }
  const settled =
    page !== null &&
    TERMINAL.has(card.status) &&
    page.items.every((delivery) => delivery.status !== "pending") &&
    (!generation.webhookEventsFilter.includes("completed") || page.items.some((d) => d.event === "completed"));
  if (!settled && state.cards.get(generation.id) === card) {
    card.deliveriesTimer = setTimeout(() => refreshDeliveries(card, generation), DELIVERY_POLL_MS);
  }
}

// Shows a generation, newest first. Terminal states never change and a status only moves forward,
// so a late or repeated event (the stream replays what the create answer already said) changes nothing.
function upsert(generation, { older = false } = {}) {
  if (state.deleted.has(generation.id)) return;
  let card = state.cards.get(generation.id);
  if (card && stage(generation.status) <= stage(card.status)) return;
  if (!card) {
    card = newCard(generation);
    const grid = $("grid");
    if (older) {
      grid.append(card.element);
    } else {
      // The grid is newest first: the new card goes before the first one older than it.
      const after = [...grid.children].find((element) => state.cards.get(element.dataset.id).createdAt < card.createdAt);
      if (!after && state.cursor) return; // older than what is shown: it arrives with "Show older"
      grid.insertBefore(card.element, after ?? null);
    }
    state.cards.set(generation.id, card);
    $("empty").hidden = true;
  }
  render(card, generation);
}

async function cancel(id, element) {
  const button = element.querySelector(".cancel");
  button.disabled = true;
  button.textContent = "Canceling…";
  try {
    upsert(await api(`/api/predictions/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
    notify("");
    refreshQuota();
  } catch (error) {
    failed(error, "cancel");
  } finally {
    button.disabled = false;
    button.textContent = "Cancel";
    if (button.hidden) element.querySelector("article").focus();
  }
}

// Deleting is for good (the images go from storage too), so it asks first.
async function remove(generation, element) {
  const named = generation.prompt.length > 60 ? `${generation.prompt.slice(0, 60)}…` : generation.prompt;
  if (!window.confirm(`Delete “${named}” and its images for good?`)) return;
  const button = element.querySelector(".delete");
  button.disabled = true;
  button.textContent = "Deleting…";
  try {
    await api(`/api/predictions/${encodeURIComponent(generation.id)}`, { method: "DELETE" });
  } catch (error) {
    button.disabled = false;
    button.textContent = "Delete";
    if (error.status !== 404) {
      failed(error, "delete");
      return;
    }
    // Gone already (deleted elsewhere): the card goes all the same.
  }
  notify("");
  state.deleted.add(generation.id);
  state.cards.delete(generation.id);
  const next = element.nextElementSibling || element.previousElementSibling;
  element.remove();
  $("empty").hidden = state.cards.size > 0;
  announce(`“${named}” was deleted.`);
  (next?.querySelector("article") || $("prompt")).focus();
}

// ---- listing, quota, stream ----

async function loadPage() {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.cursor) query.set("cursor", state.cursor);
  const page = await api(`/api/generations?${query}`);
  const first = page.items.length ? page.items[0].id : null;
  page.items.forEach((generation) => upsert(generation, { older: true }));
  state.cursor = page.nextCursor;
  $("more").hidden = !state.cursor;
  $("empty").hidden = state.cards.size > 0;
  return first;
}

async function showOlder() {
  const more = $("more");
  more.disabled = true;
  try {
    const first = await loadPage();
    notify("");
    if (more.hidden && first) state.cards.get(first).element.querySelector("article").focus();
  } catch (error) {
    failed(error, "load");
  } finally {
    more.disabled = false;
  }
}

function refreshQuota() {
  clearTimeout(state.quotaTimer);
  state.quotaTimer = setTimeout(async () => {
    try {
      const me = await api("/api/me");
      state.quota = me.quota;
      $("quota-text").textContent = `${me.activeGenerations} of ${me.quota} in progress`;
      $("quota-meter").max = me.quota;
      $("quota-meter").value = Math.min(me.activeGenerations, me.quota);
      $("quota").hidden = false;
    } catch (error) {
      if (error.status === 401) failed(error, "quota");
    }
  }, 150);
}

// What ended while no stream was open (before the first one, or when the server lost track of the last event
// id): a fresh stream opens with the unfinished generations only.
async function refreshUnfinished() {
  const open = [...state.cards.entries()].filter(([, card]) => !TERMINAL.has(card.status));
  await Promise.all(
    open.map(async ([id]) => {
      try {
        upsert(await api(`/api/predictions/${encodeURIComponent(id)}`));
      } catch {
        // The stream or the next reconnect brings it.
      }
    }),
  );
}

function setLive(live) {
  const badge = $("live");
  badge.dataset.state = live;
  badge.textContent = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…" }[live];
}

async function readEvents(body, onEvent, onActivity) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  let id = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onActivity();
    buffer += value;
    let end;
    while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
      if (end === buffer.length - 1 && buffer[end] === "\r") break; // its "\n" may be in the next chunk
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (data.length) onEvent(event, data.join("\n"), id);
        event = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
        else if (field === "id" && !text.includes("\0")) id = text;
      }
    }
  }
}

async function watch(stop) {
  let delay = 1000;
  let lastEventId = "";
  while (!stop.signal.aborted) {
    const connection = new AbortController();
    const cut = () => connection.abort();
    stop.signal.addEventListener("abort", cut);
    let silence = setTimeout(cut, STREAM_SILENCE_MS);
    const activity = () => {
      clearTimeout(silence);
      silence = setTimeout(cut, STREAM_SILENCE_MS);
    };
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
      // Resuming, the server also replays what changed after the last event this page saw.
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      const response = await fetch("/api/generations/events", {
        headers,
        cache: "no-store",
        signal: connection.signal,
      });
      if (response.status === 401) {
        signOut(sentence(new ApiError(401, ""), "stream"));
        return;
      }
      if (response.status === 400) lastEventId = ""; // an id this server cannot resume from: start afresh
      if (!response.ok || !response.body) throw new ApiError(response.status, "");
      setLive("live");
      delay = 1000;
      refreshUnfinished();
      refreshQuota();
      await readEvents(
        response.body,
        (event, data, id) => {
          if (event !== "generation") return;
          if (id) lastEventId = id;
          upsert(JSON.parse(data));
          refreshQuota();
        },
        activity,
      );
    } catch {
      // Dropped, cut for silence, or refused: reconnect below, unless signed out.
    } finally {
      clearTimeout(silence);
      stop.signal.removeEventListener("abort", cut);
    }
    if (stop.signal.aborted) return;
    setLive("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, STREAM_RETRY_MAX_MS);
  }
}

// ---- the model's options, from its input schema ----

const typeOf = (spec) => (Array.isArray(spec.type) ? spec.type.find((type) => type !== "null") : spec.type);
// A string the model reads as a URL is where a reference image goes: it is uploaded, then named by its reference.
const takesImage = (spec) => typeOf(spec) === "string" && (spec.format === "uri" || spec.format === "uri-reference");

async function loadModels() {
  try {
    const { items } = await api("/api/models");
    state.schemas = new Map(items.map((item) => [item.id, item.inputSchema]));
  } catch (error) {
    if (error.status === 401) throw error;
    state.schemas = new Map(); // no options offered: the model's defaults apply
    $("options").hidden = true;
    return;
  }
  buildOptions();
}

function buildOptions() {
  const model = $("model").value;
  if (state.token && state.schemas.size === 0) {
    loadModels().catch(() => {}); // they could not be read at sign-in: try again (it rebuilds when read)
    return;
  }
  const properties = Object.entries(state.schemas.get(model)?.properties ?? {}).filter(([name]) => name !== "prompt");
  $("options-model").textContent = model;
  const fields = properties.filter(([, spec]) => spec && typeof spec === "object");
  $("option-fields").replaceChildren(...fields.map(([name, spec]) => optionField(name, spec)));
  $("options").hidden = properties.length === 0;
}

function optionField(name, spec) {
  const field = document.createElement("div");
  field.className = "field";
  const id = `option-${name}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = spec.title || name.replace(/_/g, " ");
  const type = typeOf(spec);
  let control;
  if (Array.isArray(spec.enum)) {
    control = document.createElement("select");
    control.dataset.kind = "enum";
    if (spec.default === undefined) control.append(new Option("Default", ""));
    for (const value of spec.enum) {
      const option = new Option(String(value), JSON.stringify(value));
      option.selected = value === spec.default;
      control.append(option);
    }
  } else if (type === "integer" || type === "number") {
    control = document.createElement("input");
    control.type = "number";
    control.dataset.kind = "number";
    control.inputMode = type === "integer" ? "numeric" : "decimal";
    if (typeof spec.minimum === "number") control.min = String(spec.minimum);
    if (typeof spec.maximum === "number") control.max = String(spec.maximum);
    control.step = typeof spec.multipleOf === "number" ? String(spec.multipleOf) : type === "integer" ? "1" : "any";
    if (typeof spec.default === "number") control.value = String(spec.default);
    if (!control.value) control.placeholder = type === "integer" ? "Random" : "";
  } else if (type === "boolean") {
    control = document.createElement("input");
    control.type = "checkbox";
    control.dataset.kind = "boolean";
    control.checked = spec.default === true;
  } else if (takesImage(spec)) {
    control = document.createElement("input");
    control.type = "file";
    control.accept = "image/png,image/jpeg,image/webp";
    control.dataset.kind = "image";
    field.classList.add("wide");
  } else {
    control = document.createElement("input");
    control.type = "text";
    control.dataset.kind = "text";
    if (typeof spec.maxLength === "number") control.maxLength = spec.maxLength;
    if (typeof spec.default === "string") control.value = spec.default;
    if (typeof spec.maxLength === "number" && spec.maxLength > 100) field.classList.add("wide");
  }
  control.id = id;
  control.name = name;
  field.append(label, control);
  if (spec.description) {
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.id = `${id}-hint`;
    hint.textContent = spec.description;
    control.setAttribute("aria-describedby", hint.id);
    field.append(hint);
  }
  return field;
}

// The options as the model's input names them; a field left empty is left out, so the model's default applies.
async function chosenInput() {
  const input = {};
  for (const control of $("option-fields").querySelectorAll("[name]")) {
    const { kind } = control.dataset;
    if (kind === "image") {
      const file = control.files[0];
      if (file) input[control.name] = await uploaded(file);
    } else if (kind === "boolean") {
      input[control.name] = control.checked;
    } else if (control.value === "") {
      continue;
    } else if (kind === "enum") {
      input[control.name] = JSON.parse(control.value);
    } else if (kind === "number") {
      input[control.name] = Number(control.value);
    } else {
      input[control.name] = control.value;
    }
  }
  return input;
}

async function uploaded(file) {
  if (!state.uploads.has(file)) {
    try {
      state.uploads.set(file, (await api("/api/uploads", { method: "POST", raw: file })).ref);
    } catch (error) {
      error.action = "upload";
      throw error;
    }
  }
  return state.uploads.get(file);
}

// ---- generating ----

function randomKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function generate(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) {
    notify(`Write a prompt of 1 to ${state.config.maxPromptLength} characters.`);
    $("prompt").focus();
    return;
  }
  const button = $("generate");
  button.disabled = true;
  button.textContent = "Generating…";
  try {
    const body = { prompt, model: $("model").value };
    const input = await chosenInput();
    if (Object.keys(input).length) body.input = input;
    const same = state.pending && JSON.stringify(state.pending.body) === JSON.stringify(body);
    const key = same ? state.pending.key : randomKey();
    state.pending = { body, key };
    const generation = await api("/api/generate", { method: "POST", body, headers: { "Idempotency-Key": key } });
    state.pending = null;
    upsert(generation);
    $("prompt").value = "";
    updateCount();
    notify("");
    // The stream may have told of later states before this answer came; then those were announced already.
    if (state.cards.get(generation.id)?.status === generation.status) announce(`“${prompt.slice(0, 60)}” is queued.`);
    refreshQuota();
  } catch (error) {
    if (error.status !== 0 && error.status !== 503) state.pending = null;
    failed(error, error.action || "generate");
    refreshQuota();
  } finally {
    button.disabled = false;
    button.textContent = "Generate";
  }
}

function updateCount() {
  $("prompt-count").textContent = String($("prompt").value.length);
}

// ---- session ----

function show(signedIn) {
  $("sign-in").hidden = signedIn;
  $("session").hidden = !signedIn;
  $("create").hidden = !signedIn;
  $("gallery").hidden = !signedIn;
}

function signOut(reason = "") {
  state.stream?.abort();
  state.stream = null;
  state.token = null;
  state.cursor = null;
  state.cards.clear();
  state.uploads.clear();
  sessionStorage.removeItem(TOKEN_KEY);
  $("grid").replaceChildren();
  $("quota").hidden = true;
  show(false);
  notify(reason);
  $("token").value = "";
  $("token").focus();
}

async function loadConfig() {
  state.config = await api("/api/config", { auth: false });
  const select = $("model");
  select.replaceChildren(
    ...state.config.models.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.selected = name === state.config.defaultModel;
      return option;
    }),
  );
  $("prompt").maxLength = state.config.maxPromptLength;
  $("prompt-max").textContent = String(state.config.maxPromptLength);
}

async function start(token) {
  state.token = token;
  try {
    await loadConfig();
    await loadModels();
    await loadPage();
  } catch (error) {
    if (error.status === 401) {
      signOut(sentence(error, "sign-in"));
    } else {
      show(false);
      notify(sentence(error, "sign-in"));
    }
    return;
  }
  show(true);
  notify("");
  setLive("connecting");
  state.stream = new AbortController();
  watch(state.stream);
  refreshQuota();
  $("prompt").focus();
}

function tokenFromAddress() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const token = fragment.get("token");
  if (token !== null) {
    // Out of the address bar (and so out of history and bookmarks) at once.
    history.replaceState(null, "", window.location.pathname + window.location.search);
    if (token.trim()) sessionStorage.setItem(TOKEN_KEY, token.trim());
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token);
  });
  $("sign-out").addEventListener("click", () => signOut("You are signed out."));
  $("generate-form").addEventListener("submit", generate);
  $("model").addEventListener("change", buildOptions);
  $("prompt").addEventListener("input", updateCount);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("generate-form").requestSubmit();
  });
  $("more").addEventListener("click", showOlder);
  tokenFromAddress();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) start(token);
  else signOut();
});
