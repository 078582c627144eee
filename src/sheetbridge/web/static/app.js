/* Sheetbridge dashboard: tables, editor, background sync status.
 * Plain ES2020, no dependencies. All data goes into the DOM via textContent.
 */
(() => {
  "use strict";

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const CSRF = ($('meta[name="csrf-token"]') || {}).content || "";
  const IS_ADMIN = ($("#main") || { dataset: {} }).dataset.admin === "true";
  const PAGE_SIZE = 50;
  const BATCH = 200;
  const POLL_ACTIVE_MS = 1000;
  const POLL_IDLE_MS = 10000;
  const POLL_ERROR_MS = 5000;
  const ALL_SYNCS_POLL_MS = 5000;

  // A refused sign-out's notice is for this visit only, not for a reload.
  if (new URLSearchParams(window.location.search).has("sign_out")) {
    window.history.replaceState(null, "", window.location.pathname);
  }

  // ---------------------------------------------------------------- helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "className") node.className = value;
        else if (key === "text") node.textContent = value;
        else if (key === "dataset") Object.assign(node.dataset, value);
        else node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // An amount as a person types it: "$1,234.50" or "1 234.50" is sent as
  // 1234.50. Separators count only between groups of three digits, all of one
  // kind; anything else ("1,50", "12,34") is sent as typed, for the API to
  // refuse in its own words, never read as 150 or 1234.
  const AMOUNT_AS_TYPED = /^([+-]?)\s*\$?\s*([0-9]{1,3}(?:([, \u00a0\u2009\u202f])[0-9]{3}(?:\3[0-9]{3})*)?|[0-9]+)?(\.[0-9]*)?$/;

  function plainAmount(text) {
    const m = AMOUNT_AS_TYPED.exec(text);
    if (!m || !(m[2] || (m[4] && m[4].length > 1))) return text;
    return m[1] + (m[2] || "").replace(/[, \u00a0\u2009\u202f]/g, "") + (m[4] || "");
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  function plural(n, one, many) {
    return `${n.toLocaleString()} ${n === 1 ? one : many || one + "s"}`;
  }

  function fmtDate(value) {
    if (!value) return "";
    const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
    if (!m) return value;
    const d = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
    return d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  }

  function fmtDateTime(value, seconds = true) {
    if (!value) return "";
    const d = new Date(value);
    if (Number.isNaN(d.getTime())) return value;
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    return sameDay
      ? d.toLocaleTimeString(undefined, seconds ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function fmtMoney(value) {
    if (value === null || value === undefined || value === "") return "";
    const n = Number(value);
    if (!Number.isFinite(n)) return String(value);
    return n.toLocaleString(undefined, { style: "currency", currency: "USD" });
  }

  class ApiError extends Error {
    constructor(status, body) {
      super(ApiError.message(status, body));
      this.status = status;
      this.body = body;
    }
    static message(status, body) {
      if (body && typeof body.detail === "string") return body.detail;
      if (body && Array.isArray(body.detail)) {
        return body.detail.map((d) => d.msg).filter(Boolean).join("; ") || "Invalid input";
      }
      if (status === 0) return "The server could not be reached.";
      return `The server answered ${status}.`;
    }
  }

  async function api(method, url, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET" && method !== "HEAD") {
      init.headers["X-CSRF-Token"] = CSRF;
      init.headers["Content-Type"] = "application/json";
      if (body !== undefined) init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, null);
    }
    if (response.status === 401 || (response.redirected && new URL(response.url).pathname === "/login")) {
      window.location.assign("/login");
      throw new ApiError(401, { detail: "Please sign in again." });
    }
    if (response.status === 204) return null;
    let data = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("application/json")) {
      try { data = await response.json(); } catch (err) { data = null; }
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // Page-level status line (aria-live) for short messages.
  const pageStatus = $("#page-status");
  let pageStatusTimer = null;
  function announce(text, kind = "info") {
    if (!pageStatus) return;
    pageStatus.textContent = text;
    pageStatus.dataset.kind = kind;
    pageStatus.hidden = false;
    clearTimeout(pageStatusTimer);
    pageStatusTimer = setTimeout(() => { pageStatus.hidden = true; }, kind === "error" ? 9000 : 5000);
  }

  // ---------------------------------------------------------------- entities

  const ENTITIES = {
    customer: {
      label: "customer",
      labelPlural: "customers",
      url: "/api/customers",
      table: "#customers-table",
      panel: "#customers-panel",
      search: "#customer-search",
      countBadge: "#customers-count",
      defaultSort: "name",
      fieldset: "#customer-fields",
      fields: ["name", "email", "phone", "address", "city", "state", "zip_code", "date_of_birth", "notes"],
      nullable: ["date_of_birth"],
      title: (r) => r.name,
      columns: [
        { cls: "cell-strong", get: (r) => r.name },
        { get: (r) => r.email },
        { cls: "nowrap", get: (r) => r.phone },
        { get: (r) => r.city },
        { get: (r) => r.state },
        { cls: "col-agent", get: (r) => r.agent },
        { cls: "nowrap muted col-updated", get: (r) => fmtDateTime(r.updated_at, false), title: (r) => r.updated_at },
      ],
    },
    policy: {
      label: "policy",
      labelPlural: "policies",
      url: "/api/policies",
      table: "#policies-table",
      panel: "#policies-panel",
      search: "#policy-search",
      countBadge: "#policies-count",
      defaultSort: "policy_number",
      fieldset: "#policy-fields",
      fields: ["policy_number", "customer_id", "carrier", "line_of_business", "effective_date",
        "expiration_date", "premium", "status"],
      nullable: [],
      title: (r) => r.policy_number,
      columns: [
        { cls: "cell-strong nowrap mono", get: (r) => r.policy_number },
        { get: (r) => r.customer },
        { get: (r) => r.carrier },
        { get: (r) => r.line_of_business },
        { render: (td, r) => { td.append(el("span", { className: `status status-${r.status}`, text: r.status })); } },
        { cls: "nowrap", get: (r) => fmtDate(r.effective_date) },
        { cls: "nowrap", get: (r) => fmtDate(r.expiration_date) },
        { cls: "num nowrap", get: (r) => fmtMoney(r.premium) },
        { cls: "col-agent", get: (r) => r.agent },
      ],
    },
  };

  // Per-entity list state.
  const lists = {};
  for (const [key, spec] of Object.entries(ENTITIES)) {
    lists[key] = {
      key,
      spec,
      table: $(spec.table),
      tbody: $(`${spec.table} tbody`),
      panel: $(spec.panel),
      q: "",
      filters: {},
      sort: spec.defaultSort,
      offset: 0,
      total: 0,
      records: new Map(), // id -> record currently shown
      loading: 0,         // request sequence number, to drop stale answers
      loaded: false,
    };
  }

  function fillRow(tr, record, list) {
    const cells = tr.children;
    list.spec.columns.forEach((col, i) => {
      const td = cells[i];
      td.replaceChildren();
      td.className = col.cls || "";
      if (col.render) col.render(td, record);
      else td.textContent = col.get(record) ?? "";
      if (col.title) td.title = col.title(record) || "";
    });
    tr.dataset.version = String(record.version);
    const label = list.spec.title(record);
    const actions = cells[cells.length - 1];
    const edit = $(".row-edit", actions);
    const del = $(".row-delete", actions);
    edit.setAttribute("aria-label", `Edit ${list.spec.label} ${label}`);
    if (!del.classList.contains("confirming")) {
      del.setAttribute("aria-label", `Delete ${list.spec.label} ${label}`);
    }
  }

  function buildRow(record, list) {
    const tr = el("tr", { dataset: { id: String(record.id), entity: list.key } });
    for (let i = 0; i < list.spec.columns.length; i++) tr.append(el("td"));
    const actions = el("td", { className: "col-actions" },
      el("button", { type: "button", className: "btn btn-small row-edit", text: "Edit" }),
      el("button", { type: "button", className: "btn btn-small btn-ghost-danger row-delete", text: "Delete" }));
    tr.append(actions);
    fillRow(tr, record, list);
    return tr;
  }

  function flash(tr) {
    tr.classList.remove("flash");
    // Force reflow so the animation restarts.
    void tr.offsetWidth;
    tr.classList.add("flash");
    setTimeout(() => tr.classList.remove("flash"), 2400);
  }

  function updatePager(list) {
    const range = $(".pager-range", list.panel);
    const prev = $('[data-page="prev"]', list.panel);
    const next = $('[data-page="next"]', list.panel);
    const shown = list.tbody.children.length;
    if (list.total === 0) {
      range.textContent = `0 ${list.spec.labelPlural}`;
    } else {
      const first = list.offset + (shown ? 1 : 0);
      const last = list.offset + shown;
      range.textContent = `${first.toLocaleString()}–${last.toLocaleString()} of ${list.total.toLocaleString()}`;
    }
    prev.disabled = list.offset <= 0;
    next.disabled = list.offset + PAGE_SIZE >= list.total;
    $(".table-empty", list.panel).hidden = shown > 0 || !list.loaded;
    const badge = $(list.spec.countBadge);
    if (badge) badge.textContent = list.loaded ? list.total.toLocaleString() : "";
  }

  function updateSortHeaders(list) {
    const key = list.sort.replace(/^-/, "");
    const desc = list.sort.startsWith("-");
    for (const th of $$("th[data-sort]", list.table)) {
      th.setAttribute("aria-sort", th.dataset.sort === key ? (desc ? "descending" : "ascending") : "none");
    }
  }

  // The list's search and filters, added to a query.
  function withListFilters(params, list) {
    if (list.q) params.set("q", list.q);
    for (const [k, v] of Object.entries(list.filters)) if (v) params.set(k, v);
    return params;
  }

  async function loadList(list) {
    const seq = ++list.loading;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(list.offset), sort: list.sort });
    withListFilters(params, list);
    list.table.setAttribute("aria-busy", "true");
    try {
      const page = await api("GET", `${list.spec.url}?${params}`);
      if (seq !== list.loading) return; // a newer request superseded this one
      if (page.items.length === 0 && page.total > 0 && list.offset > 0) {
        list.offset = Math.max(0, Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE);
        loadList(list);
        return;
      }
      list.total = page.total;
      list.records.clear();
      const rows = page.items.map((r) => { list.records.set(r.id, r); return buildRow(r, list); });
      list.tbody.replaceChildren(...rows);
      list.loaded = true;
      updatePager(list);
      updateSortHeaders(list);
    } catch (err) {
      if (seq === list.loading) announce(`Could not load ${list.spec.labelPlural}: ${err.message}`, "error");
    } finally {
      if (seq === list.loading) list.table.removeAttribute("aria-busy");
    }
  }

  function wireList(list) {
    const search = $(list.spec.search);
    const onSearch = debounce(() => {
      const q = search.value.trim();
      if (q === list.q) return;
      list.q = q;
      list.offset = 0;
      loadList(list);
    }, 300);
    search.addEventListener("input", onSearch);
    search.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); list.q = "\u0000"; onSearch(); }
    });

    $('[data-page="prev"]', list.panel).addEventListener("click", () => {
      list.offset = Math.max(0, list.offset - PAGE_SIZE);
      loadList(list);
    });
    $('[data-page="next"]', list.panel).addEventListener("click", () => {
      if (list.offset + PAGE_SIZE < list.total) {
        list.offset += PAGE_SIZE;
        loadList(list);
      }
    });

    for (const th of $$("th[data-sort]", list.table)) {
      $("button", th).addEventListener("click", () => {
        const key = th.dataset.sort;
        list.sort = list.sort === key ? `-${key}` : key;
        list.offset = 0;
        updateSortHeaders(list);
        loadList(list);
      });
    }

    list.tbody.addEventListener("click", (e) => {
      const button = e.target.closest("button");
      if (!button) return;
      const tr = button.closest("tr[data-id]");
      if (!tr) return;
      const id = Number(tr.dataset.id);
      if (button.classList.contains("row-edit")) openEditor(list.key, id);
      else if (button.classList.contains("row-delete")) askDelete(list, id, button);
    });
  }

  // Two-step delete: the first click arms the button, a second one deletes.
  function askDelete(list, id, button) {
    const record = list.records.get(id);
    if (!record) return;
    if (!button.classList.contains("confirming")) {
      button.classList.add("confirming");
      button.textContent = "Confirm delete";
      button.setAttribute("aria-label", `Confirm: delete ${list.spec.label} ${list.spec.title(record)}`);
      announce(`Press "Confirm delete" to delete ${list.spec.title(record)}.`);
      button._disarm = setTimeout(() => disarm(button, list, record), 5000);
      return;
    }
    clearTimeout(button._disarm);
    disarm(button, list, record);
    deleteRecord(list, record);
  }

  function disarm(button, list, record) {
    button.classList.remove("confirming");
    button.textContent = "Delete";
    button.setAttribute("aria-label", `Delete ${list.spec.label} ${list.spec.title(record)}`);
  }

  async function deleteRecord(list, record) {
    const tr = rowFor(list, record.id);
    try {
      await api("DELETE", `${list.spec.url}/${record.id}?version=${record.version}`);
      list.records.delete(record.id);
      if (tr) tr.remove();
      list.total = Math.max(0, list.total - 1);
      updatePager(list);
      announce(`Deleted ${list.spec.label} ${list.spec.title(record)}.`);
      if (editor.entity === list.key && editor.id === record.id) {
        showFormNotice("This record has been deleted.", []);
      }
    } catch (err) {
      if (err.status === 409 && err.body && err.body.current) {
        patchRecord(list, err.body.current);
        announce(`${list.spec.title(record)} was changed by someone else; the row now shows their version. Delete again if you still want to.`, "error");
      } else if (err.status === 404) {
        list.records.delete(record.id);
        if (tr) tr.remove();
        list.total = Math.max(0, list.total - 1);
        updatePager(list);
        announce(`${list.spec.title(record)} no longer exists.`);
      } else {
        announce(`Could not delete ${list.spec.title(record)}: ${err.message}`, "error");
      }
    }
  }

  function rowFor(list, id) {
    return list.tbody.querySelector(`tr[data-id="${Number(id)}"]`);
  }

  // Replace the cells of a row in place, if it is on screen.
  function patchRecord(list, record, highlight = true) {
    const tr = rowFor(list, record.id);
    if (!tr) return false;
    list.records.set(record.id, record);
    fillRow(tr, record, list);
    if (highlight) flash(tr);
    return true;
  }

  // ---------------------------------------------------------------- tabs

  const tabs = { customer: $("#show-customers"), policy: $("#show-policies") };
  let activeTab = "customer";

  function showTab(key, focus = false) {
    activeTab = key;
    for (const [k, tab] of Object.entries(tabs)) {
      const on = k === key;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      lists[k].panel.hidden = !on;
    }
    if (focus) tabs[key].focus();
    if (!lists[key].loaded) loadList(lists[key]);
  }

  tabs.customer.addEventListener("click", () => showTab("customer"));
  tabs.policy.addEventListener("click", () => showTab("policy"));
  for (const tab of Object.values(tabs)) {
    tab.addEventListener("keydown", (e) => {
      if (["ArrowLeft", "ArrowRight", "Home", "End"].includes(e.key)) {
        e.preventDefault();
        showTab(activeTab === "customer" ? "policy" : "customer", true);
      }
    });
  }

  // ---------------------------------------------------------------- editor

  const drawer = $("#editor");
  const form = $("#record-form");
  const formNotice = $("#form-notice");
  const formError = $("#form-error");
  const editorTitle = $("#editor-title");
  const formVersion = $("#form-version");
  const saveButton = $("#save-record");

  // entity, id (null when creating), version and the values it was loaded with.
  const editor = { entity: null, id: null, version: null, loaded: null, saving: false, opener: null, seq: 0 };

  function input(name) {
    return form.elements.namedItem(name);
  }

  function valueForInput(record, name) {
    const v = record ? record[name] : null;
    if (v === null || v === undefined) return "";
    return String(v);
  }

  function setFormValues(record) {
    const spec = ENTITIES[editor.entity];
    for (const name of spec.fields) {
      const field = input(name);
      if (field) field.value = valueForInput(record, name);
    }
    if (editor.entity === "policy") describeCustomer(record);
  }

  function formValues() {
    const spec = ENTITIES[editor.entity];
    const out = {};
    for (const name of spec.fields) {
      const field = input(name);
      if (field) out[name] = field.value;
    }
    return out;
  }

  function toPayload(values) {
    const spec = ENTITIES[editor.entity];
    const out = {};
    for (const [name, raw] of Object.entries(values)) {
      let v = typeof raw === "string" && name !== "notes" ? raw.trim() : raw;
      if (spec.nullable.includes(name) && v === "") v = null;
      if (name === "customer_id") v = v === "" ? null : Number(v);
      if (name === "premium") v = plainAmount(v);
      out[name] = v;
    }
    return out;
  }

  function isDirty() {
    if (!editor.entity) return false;
    const now = formValues();
    const base = editor.loaded || {};
    return Object.keys(now).some((k) => now[k] !== valueForInput(base, k));
  }

  function clearErrors() {
    for (const p of $$(".field-error", form)) p.textContent = "";
    for (const i of $$("[aria-invalid]", form)) i.removeAttribute("aria-invalid");
    formError.hidden = true;
    formError.textContent = "";
  }

  function clearFormNotice() {
    formNotice.hidden = true;
    formNotice.replaceChildren();
    delete formNotice.dataset.kind;
  }

  // A notice at the top of the form with optional action buttons.
  function showFormNotice(text, actions, kind = "warning") {
    formNotice.replaceChildren(el("p", { text }));
    if (actions.length) {
      const bar = el("div", { className: "notice-actions" });
      for (const a of actions) {
        const b = el("button", { type: "button", className: `btn btn-small${a.primary ? " btn-primary" : ""}`, id: a.id, text: a.label });
        b.addEventListener("click", a.run);
        bar.append(b);
      }
      formNotice.append(bar);
    }
    formNotice.dataset.kind = kind;
    formNotice.hidden = false;
  }

  function setVersion(record) {
    editor.version = record ? record.version : null;
    formVersion.textContent = record ? `Version ${record.version}` : "";
  }

  function openDrawer() {
    editor.opener = document.activeElement;
    drawer.hidden = false;
    document.body.classList.add("editing");
  }

  // Typing is never thrown away unasked: closing the form, opening another
  // record in it, or leaving the page asks first.
  function mayDiscard() {
    if (drawer.hidden || !isDirty()) return true;
    return window.confirm(`Discard your unsaved changes to ${editorTitle.textContent.replace(/^Edit /, "")}?`);
  }

  function requestClose() {
    if (mayDiscard()) closeEditor();
  }

  window.addEventListener("beforeunload", (e) => {
    if (!drawer.hidden && isDirty()) e.preventDefault();
  });

  function closeEditor() {
    drawer.hidden = true;
    document.body.classList.remove("editing");
    editor.entity = null;
    editor.id = null;
    editor.loaded = null;
    editor.seq++;
    clearFormNotice();
    clearErrors();
    if (editor.opener && document.contains(editor.opener)) editor.opener.focus();
  }

  function prepareForm(entity) {
    editor.entity = entity;
    for (const [key, spec] of Object.entries(ENTITIES)) {
      const fs = $(spec.fieldset);
      const on = key === entity;
      fs.hidden = !on;
      fs.disabled = !on;
    }
    clearErrors();
    clearFormNotice();
  }

  function firstInput() {
    return $(`${ENTITIES[editor.entity].fieldset} input, ${ENTITIES[editor.entity].fieldset} select`);
  }

  function openCreate(entity) {
    if (!mayDiscard()) return;
    openDrawer();
    prepareForm(entity);
    editor.id = null;
    editor.seq++;
    const blank = {};
    if (entity === "policy") {
      const today = new Date();
      const iso = (d) => `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
      const next = new Date(today); next.setFullYear(today.getFullYear() + 1);
      Object.assign(blank, { status: "active", line_of_business: input("line_of_business").options[0].value,
        effective_date: iso(today), expiration_date: iso(next) });
    }
    editor.loaded = blank;
    setVersion(null);
    setFormValues(blank);
    editorTitle.textContent = `New ${ENTITIES[entity].label}`;
    saveButton.textContent = `Create ${ENTITIES[entity].label}`;
    firstInput().focus();
  }

  async function openEditor(entity, id) {
    if (!mayDiscard()) return;
    const list = lists[entity];
    const cached = list.records.get(id);
    openDrawer();
    prepareForm(entity);
    editor.id = id;
    const seq = ++editor.seq;
    editorTitle.textContent = `Edit ${ENTITIES[entity].label}${cached ? ` ${ENTITIES[entity].title(cached)}` : ""}`;
    saveButton.textContent = "Save changes";
    if (cached) {
      editor.loaded = cached;
      setVersion(cached);
      setFormValues(cached);
    }
    firstInput().focus();
    // Make sure the form holds the latest version; don't overwrite typing.
    try {
      const fresh = await api("GET", `${ENTITIES[entity].url}/${id}`);
      if (seq !== editor.seq) return;
      patchRecord(list, fresh, false);
      if (!cached || (!isDirty() && fresh.version !== editor.version)) {
        loadIntoForm(fresh);
      } else if (fresh.version !== editor.version) {
        offerReload(fresh, "This record was changed by someone else.");
      }
    } catch (err) {
      if (seq !== editor.seq) return;
      if (err.status === 404) showFormNotice("This record no longer exists.", []);
      else if (!cached) showFormNotice(`Could not load the record: ${err.message}`, [], "error");
    }
  }

  function loadIntoForm(record) {
    editor.loaded = record;
    setVersion(record);
    setFormValues(record);
    clearErrors();
    clearFormNotice();
    editorTitle.textContent = `Edit ${ENTITIES[editor.entity].label} ${ENTITIES[editor.entity].title(record)}`;
  }

  // Someone else changed the record: keep what was typed, let the user choose.
  function offerReload(current, text, stale = false) {
    const actions = [
      { id: "reload-record", label: stale ? "Load their version" : "Reload this record", primary: true,
        run: () => { loadIntoForm(current); announce("Loaded the latest version."); firstInput().focus(); } },
    ];
    if (stale) {
      actions.push({ id: "keep-mine", label: "Keep my changes",
        run: () => {
          // Keep the fields this user edited; take everything else from their version.
          const original = editor.loaded || {};
          const now = formValues();
          for (const name of ENTITIES[editor.entity].fields) {
            if (now[name] === valueForInput(original, name)) input(name).value = valueForInput(current, name);
          }
          if (editor.entity === "policy" && String(current.customer_id) === input("customer_id").value) describeCustomer(current);
          editor.loaded = current;
          setVersion(current);
          clearFormNotice();
          showFormNotice("Your edits are kept on top of their version. Save to apply them.", [], "info");
        } });
    }
    editor.pending = current;
    showFormNotice(text, actions);
  }

  function showFieldErrors(detail) {
    const general = [];
    for (const d of detail) {
      let field = d.field;
      if (!field && Array.isArray(d.loc)) field = d.loc.slice(1).join(".");
      const target = field && $(`#err-${CSS.escape(field)}`, form);
      const fieldInput = field && input(field);
      const msg = String(d.msg || "invalid").replace(/^(Value|Assertion) error, /, "");
      if (target && fieldInput && !fieldInput.disabled) {
        target.textContent = target.textContent ? `${target.textContent} ${msg}` : msg;
        fieldInput.setAttribute("aria-invalid", "true");
      } else {
        general.push(field ? `${field.replace(/_/g, " ")}: ${msg}` : msg);
      }
    }
    if (general.length) {
      formError.textContent = general.join(" ");
      formError.hidden = false;
    }
    const bad = $("[aria-invalid]", form);
    if (bad) bad.focus();
  }

  // A date the picker cannot read (February 30th, a year left half typed)
  // has the value "", which would save as no date at all.
  function unreadableDates() {
    return ENTITIES[editor.entity].fields
      .filter((name) => { const field = input(name); return field && field.validity && field.validity.badInput; })
      .map((name) => ({ field: name, msg: "This is not a real date, so nothing was saved. Correct it, or clear the field." }));
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (editor.saving || !editor.entity) return;
    const unreadable = unreadableDates();
    if (unreadable.length) {
      clearErrors();
      showFieldErrors(unreadable);
      return;
    }
    const entity = editor.entity;
    const spec = ENTITIES[entity];
    const list = lists[entity];
    const values = toPayload(formValues());
    let method = "POST";
    let url = spec.url;
    let body = values;
    if (editor.id !== null) {
      const base = toPayload(Object.fromEntries(spec.fields.map((k) => [k, valueForInput(editor.loaded, k)])));
      body = { version: editor.version };
      for (const [k, v] of Object.entries(values)) if (v !== base[k]) body[k] = v;
      method = "PATCH";
      url = `${spec.url}/${editor.id}`;
      if (Object.keys(body).length === 1) {
        announce("Nothing changed.");
        closeEditor();
        return;
      }
    }
    clearErrors();
    editor.saving = true;
    saveButton.setAttribute("aria-busy", "true");
    const seq = editor.seq;
    try {
      const saved = await api(method, url, body);
      if (seq !== editor.seq) return;
      if (method === "POST") {
        list.records.set(saved.id, saved);
        const tr = buildRow(saved, list);
        list.tbody.prepend(tr);
        list.total += 1;
        updatePager(list);
        flash(tr);
        announce(`Created ${spec.label} ${spec.title(saved)}.`);
      } else {
        patchRecord(list, saved);
        announce(`Saved ${spec.label} ${spec.title(saved)}.`);
      }
      closeEditor();
    } catch (err) {
      if (seq !== editor.seq) return;
      if (err.status === 422 && err.body && Array.isArray(err.body.detail)) {
        showFieldErrors(err.body.detail);
      } else if (err.status === 409 && err.body && err.body.current) {
        patchRecord(list, err.body.current);
        offerReload(err.body.current, "This record was changed by someone else. Your changes are not saved yet.", true);
      } else if (err.status === 404) {
        showFormNotice("This record no longer exists; it may have been deleted.", [], "error");
      } else {
        formError.textContent = `Not saved: ${err.message}`;
        formError.hidden = false;
      }
    } finally {
      editor.saving = false;
      saveButton.removeAttribute("aria-busy");
    }
  });

  $("#close-editor").addEventListener("click", requestClose);
  $("#cancel-edit").addEventListener("click", requestClose);
  drawer.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.preventDefault(); requestClose(); }
  });
  // Escape closes the form wherever the focus is, but inside another form
  // that takes Escape itself (a conflict's edit).
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape" || drawer.hidden || e.defaultPrevented) return;
    if (drawer.contains(e.target) || e.target.closest("form.conflict-editor")) return;
    requestClose();
  });
  $("#new-customer").addEventListener("click", () => openCreate("customer"));
  $("#new-policy").addEventListener("click", () => openCreate("policy"));

  // Customer lookup for policies: a datalist fed by the customers API.
  const lookup = $("#customer-lookup");
  const lookupOptions = $("#customer-options");
  const picked = $("#customer-picked");
  const customerNames = new Map();

  function describeCustomer(record) {
    lookup.value = "";
    const id = record && record.customer_id;
    if (id && record.customer) customerNames.set(Number(id), record.customer);
    picked.textContent = id ? `Customer: ${customerNames.get(Number(id)) || `#${id}`}` : "";
  }

  const runLookup = debounce(async () => {
    const q = lookup.value.trim();
    if (q.length < 2 || /#\d+\)$/.test(q)) return;
    try {
      const page = await api("GET", `/api/customers?${new URLSearchParams({ q, limit: "20" })}`);
      lookupOptions.replaceChildren(...page.items.map((c) => {
        customerNames.set(c.id, c.name);
        return el("option", { value: `${c.name}${c.city ? ` · ${c.city}` : ""} (#${c.id})` });
      }));
    } catch (err) { /* the lookup is a convenience; typing an id still works */ }
  }, 250);
  lookup.addEventListener("input", () => {
    const m = /\(#(\d+)\)$/.exec(lookup.value);
    if (m) {
      input("customer_id").value = m[1];
      picked.textContent = `Customer: ${customerNames.get(Number(m[1])) || `#${m[1]}`}`;
    } else {
      runLookup();
    }
  });
  input("customer_id").addEventListener("input", () => {
    const id = Number(input("customer_id").value);
    picked.textContent = id ? `Customer: ${customerNames.get(id) || `#${id}`}` : "";
  });

  // ---------------------------------------------------------------- sync: state

  const syncMessage = $("#sync-message");
  const activeList = $("#active-jobs");
  const recentList = $("#recent-jobs");
  const RECENT_LIMIT = 20;
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const jobs = new Map();        // job id -> latest job view
  const jobEls = new Map();      // job id -> <li>
  const seenState = new Map();   // job id -> state already acted on (announce, refresh)
  const refreshed = new Set();   // from_sheet jobs whose rows were patched (once each)
  const undoState = new Map();   // job id -> {busy} | {report} | {error}
  const writtenBack = new Set(); // jobs whose deleted rows were asked back
  let firstSnapshot = true;
  let messageJob = 0;            // the job the sync message is about; 0: none (or an error)
  let messageNote = "";          // what its answer said besides (records a write-back left out)

  const KIND = { to_sheet: "Sync to sheet", from_sheet: "Sync from sheet" };
  const STATE_WORDS = {
    queued: "Queued", retry: "Retry waiting", running: "Running", succeeded: "Done",
    failed: "Failed", cancelled: "Cancelled",
  };
  const PHASES = {
    to_sheet: ["reading", "comparing", "writing"],
    from_sheet: ["reading", "comparing", "importing"],
  };
  const COUNT_WORDS = [
    ["written_cells", "cell written", "cells written"],
    ["appended", "row appended", "rows appended"],
    ["updated_rows", "row updated in the sheet", "rows updated in the sheet"],
    ["created", "record created", "records created"],
    ["updated", "record updated", "records updated"],
    ["deleted", "row deleted", "rows deleted"],
    ["skipped", "row skipped", "rows skipped"],
    ["conflicts", "conflict", "conflicts"],
    ["errors", "error", "errors"],
    ["pending_import", "sheet edit waiting for import", "sheet edits waiting for import"],
    ["pending_export", "app change waiting for export", "app changes waiting for export"],
    ["deleted_in_sheet", "row deleted in the sheet", "rows deleted in the sheet"],
    ["deleted_in_app", "record deleted in the app", "records deleted in the app"],
    ["readonly", "read-only column edit ignored", "read-only column edits ignored"],
  ];
  const SKIP_COUNTS = new Set(["unchanged", "issues"]);
  // Each issue says what it is in words, not by its colour alone.
  const ISSUE_KINDS = { error: "Error", conflict: "Conflict", warning: "Warning" };

  function isRetryWaiting(job) {
    return job.state === "queued" && Number(job.attempts || 0) > 0 && Boolean(job.error);
  }

  // How far a job has got. Snapshots (polls, the stream's opening status) and
  // single events may arrive out of order; a job never goes back a stage, and
  // a final state is final. A retry (running -> queued) raises attempts.
  function stage(job) {
    if (FINAL.has(job.state)) return Number.POSITIVE_INFINITY;
    const a = Number(job.attempts || 0);
    return job.state === "running" ? 2 * a - 1 : 2 * a;
  }

  function upsertJob(job) {
    const old = jobs.get(job.id);
    if (old && stage(job) < stage(old)) return false;
    if (old && FINAL.has(old.state) && FINAL.has(job.state) && old.result) {
      // Events from other processes carry no result; a snapshot's counts a
      // result's issues where the job's own view, already here, lists them.
      if (!job.result || (job.result.brief && !old.result.brief)) job = { ...job, result: old.result };
    }
    jobs.set(job.id, job);
    return true;
  }

  // ---------------------------------------------------------------- sync: words

  function summaryWords(summary) {
    if (!summary) return "";
    const parts = [];
    const known = new Set();
    for (const [key, one, many] of COUNT_WORDS) {
      known.add(key);
      const n = Number(summary[key] || 0);
      if (n > 0) parts.push(plural(n, one, many));
    }
    for (const [key, value] of Object.entries(summary)) {
      const n = Number(value || 0);
      if (!known.has(key) && !SKIP_COUNTS.has(key) && n > 0) parts.push(`${n.toLocaleString()} ${key.replace(/_/g, " ")}`);
    }
    const unchanged = Number(summary.unchanged || 0);
    if (!parts.length) return unchanged ? `No changes (${plural(unchanged, "record")} already in sync)` : "No changes needed";
    return parts.join(", ");
  }

  // A conflict's base: none when no earlier sync of the field with this sheet
  // tells which side changed (the book was just pointed at the sheet).
  function baseText(c) {
    return c.base_known === false ? "(never synced with this sheet)" : canonical(c.base);
  }

  function canonical(v) {
    if (v === null || v === undefined || v === "") return "(empty)";
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }

  // Server messages may name files by their full server path; the file name is enough.
  function plainReason(text) {
    return String(text || "unknown error")
      .replace(/(^|[\s'"(])(?:[A-Za-z]:)?[\\/](?:[^\s\\/'"]+[\\/])+([^\s\\/'"]+)/g, "$1$2");
  }

  function adviceFor(job) {
    const e = String(job.error || "").toLowerCase();
    if (/not a readable|not a zip|bad zip|invalid spreadsheet|corrupt|is damaged/.test(e)) {
      return "The workbook file is damaged or is not an Excel (.xlsx) file. Put back a good copy (or remove it and run Sync to sheet to write a fresh one), then sync again.";
    }
    if (/locked|open in another program/.test(e)) return "Close the workbook in the other program, then sync again.";
    if (/permission denied/.test(e)) return "Sheetbridge may not open this sheet. Ask an admin to check who the sheet is shared with, then sync again.";
    if (/check the spreadsheet id/.test(e)) return "The Google spreadsheet could not be opened: check its ID in the sheet settings, and that it is shared with the account the reason names, then sync again.";
    if (/never synced/.test(e)) return "This book has not been written to its sheet yet. Run Sync to sheet first; Sync from sheet works after that.";
    if (/not found|does not exist|has no tab/.test(e)) return "The sheet or one of its tabs is missing. Restore it, or run Sync to sheet to write it anew, then sync again.";
    if (/header|column/.test(e)) return "Fix the header row the message names (row 1 of that tab), then sync again.";
    if (/quota|temporar|timed out|timeout|rate/.test(e)) return "The spreadsheet service is busy. Wait a minute, then sync again.";
    if (/stopped responding|worker/.test(e)) return "The server was interrupted. Sync again; nothing was half written.";
    return "Fix what the reason names, then sync again. If it keeps failing, tell your admin the sync number.";
  }

  // A snapshot (the status, the stream's opening) counts each job's issues;
  // the job's own view lists them, fetched once its list is opened.
  function briefIssuesDetails(job) {
    const tabs = Object.values(job.result.tabs || {});
    const n = tabs.reduce((sum, data) => sum + Number((data && data.issues_listed) || 0), 0);
    if (!n) return null;
    const note = el("p", { className: "job-line muted", text: "Loading the issues…" });
    const details = el("details", { className: "job-issues" },
      el("summary", { text: issuesLabel(n, job.result.summary) }), note);
    details.addEventListener("toggle", () => {
      if (!details.open) return;
      api("GET", `/api/insurance/sync/jobs/${job.id}`)
        .then((full) => { if (upsertJob(full)) render(); })
        .catch((err) => { note.textContent = `Could not load the issues: ${err.message}`; });
    });
    return details;
  }

  function issuesDetails(job) {
    if (job.result.brief) return briefIssuesDetails(job);
    const rows = [];
    for (const [tab, data] of Object.entries(job.result.tabs || {})) {
      const conflicts = (data && data.conflicts) || [];
      const withValues = new Set(conflicts.map((c) => `${c.row} ${c.column}`));
      for (const c of conflicts) {
        const was = c.base_known === false ? "never synced with this sheet" : `was ${canonical(c.base)}`;
        rows.push([tab, c.row, c.column, `app has ${canonical(c.app)}, sheet has ${canonical(c.sheet)} (${was})`, "conflict"]);
      }
      for (const i of (data && data.issues) || []) {
        if (i.kind === "conflict" && withValues.has(`${i.row} ${i.column}`)) continue; // listed above
        const value = i.value !== null && i.value !== undefined && i.value !== "" ? ` (value: ${i.value})` : "";
        rows.push([i.tab || tab, i.row, i.column, `${i.reason}${value}`, i.kind || "error"]);
      }
    }
    if (!rows.length) return null;
    const items = rows.map(([tab, row, column, reason, kind]) => {
      const where = [tab, row !== null && row !== undefined ? `row ${row}` : null, column].filter(Boolean).join(" · ");
      return el("li", { dataset: { kind } },
        el("span", { className: "issue-where", text: where }),
        el("span", { className: "issue-reason" },
          el("strong", { className: "issue-kind", text: `${ISSUE_KINDS[kind] || "Note"}: ` }), reason));
    });
    const details = el("details", { className: "job-issues" },
      el("summary", { text: issuesLabel(rows.length, job.result.summary) }),
      el("ul", { className: "issues-list" }, ...items));
    if (Number(job.result.summary && job.result.summary.issues) > rows.length) {
      details.append(el("p", { className: "job-line muted",
        text: "The rest are not listed: fix these in the sheet and sync again to see them." }));
    }
    return details;
  }

  // A result lists the first 500 issues of a tab; its summary counts them all.
  function issuesLabel(listed, summary) {
    const total = Number((summary && summary.issues) || 0);
    if (total > listed) return `Show the first ${listed.toLocaleString()} of ${plural(total, "row-level issue")}`;
    return `Show ${plural(listed, "row-level issue")}`;
  }

  // What to write back of the rows a sync reported deleted from the sheet
  // (their records kept in the app): the records its result names, or all
  // of them when that list was cut short. The server leaves out a record
  // that may be a row whose ID is in doubt: never two rows.
  const TAB_ENTITIES = { Customers: "customers", Policies: "policies" };
  function deletedInSheet(result) {
    const body = { customers: [], policies: [] };
    let count = 0;
    let cut = false;
    for (const [tab, data] of Object.entries((result && result.tabs) || {})) {
      const entity = TAB_ENTITIES[tab];
      if (!entity || !data) continue;
      if (data.write_back_cut) cut = true;
      for (const id of data.write_back || []) {
        body[entity].push(Number(id));
        count += 1;
      }
    }
    if (cut) return { body: { all: true }, label: "Write back all rows deleted from the sheet", count };
    return { body, label: `Write back ${plural(count, "deleted row")}`, count };
  }

  function progressBlock(job) {
    const p = job.progress || {};
    const phases = PHASES[job.kind] || [];
    const wrap = el("div", { className: "job-progress" });
    const id = `job-${job.id}-progress`;
    if (!p.phase) {
      wrap.append(el("span", { id, text: "Starting…" }), el("progress", { "aria-labelledby": id }));
      return wrap;
    }
    if (job.waiting_for) {
      wrap.append(el("span", { id, text: `Paused: waiting for ${job.waiting_for}` }), el("progress", { "aria-labelledby": id }));
      return wrap;
    }
    if (p.phase === "retrying") {
      // A Sheets API call failed for a moment; the worker tries it again by itself.
      const why = /quota/i.test(p.reason || "")
        ? "Waiting for quota: Google Sheets asked to slow down."
        : `The sheet service had a problem: ${plainReason(p.reason).replace(/\.$/, "")}.`;
      const delay = Number(p.delay_s);
      const when = Number.isFinite(delay) && delay > 0 ? ` in ${Math.round(delay)} s` : "";
      wrap.append(el("span", { id, text: `${why} Retry ${p.retries || 1}${when}.` }), el("progress", { "aria-labelledby": id }));
      wrap.append(...countsLine(p));
      return wrap;
    }
    const step = phases.indexOf(p.phase);
    const total = Number(p.total || 0);
    const done = Number(p.done || 0);
    const phase = p.phase[0].toUpperCase() + p.phase.slice(1);
    let label = step >= 0 ? `Step ${step + 1} of ${phases.length}: ${p.phase}` : `${phase}…`;
    if (total > 0) label += done > 0 ? ` (${done.toLocaleString()} of ${total.toLocaleString()})` : ` (${plural(total, "change")})`;
    wrap.append(el("span", { id, text: label }));
    if (total > 0 && done > 0) {
      wrap.append(el("progress", { max: String(total), value: String(Math.min(done, total)), "aria-labelledby": id }));
    } else if (step >= 0) {
      // Steps done so far, plus half of the current one.
      wrap.append(el("progress", { max: String(phases.length * 2), value: String(step * 2 + 1), "aria-labelledby": id }));
    } else {
      wrap.append(el("progress", { "aria-labelledby": id }));
    }
    wrap.append(...countsLine(p));
    return wrap;
  }

  // Counts such as rows_read or cells_to_write read "1 row read", "2 cells to write".
  function countsLine(progress) {
    const counts = Object.entries(progress).filter(([k, v]) => /^(rows|cells)_/.test(k) && typeof v === "number" && v > 0);
    const words = ([k, v]) => {
      const [noun, ...rest] = k.split("_");
      return `${v.toLocaleString()} ${v === 1 ? noun.slice(0, -1) : noun} ${rest.join(" ")}`;
    };
    return counts.length ? [el("span", { className: "muted", text: counts.map(words).join(", ") })] : [];
  }

  // How long a job took; one that needed more than one try, from its
  // queueing, as its last try's start says nothing of the tries before.
  function duration(job) {
    const retried = Number(job.attempts) > 1;
    const from = retried ? job.enqueued_at : job.started_at;
    if (!from || !job.finished_at) return "";
    const ms = new Date(job.finished_at) - new Date(from);
    if (!Number.isFinite(ms) || ms < 0) return "";
    const span = ms < 100 ? "under 0.1 s" : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 60000)} min`;
    return retried ? ` · ${job.attempts} attempts, ${span} from queued to finished` : ` · took ${span}`;
  }

  function changedCount(job) {
    const changed = (job.result && job.result.changed) || {};
    return Object.values(changed).reduce((n, ids) => n + (Array.isArray(ids) ? ids.length : 0), 0);
  }

  function offerUndo(job, actions) {
    const u = undoState.get(job.id);
    if (u && !u.error) return;
    const undo = el("button", { type: "button", className: "btn btn-small job-undo",
      text: "Undo import", "aria-label": `Undo import #${job.id}` });
    undo.dataset.undoJob = String(job.id);
    actions.push(undo);
  }

  // "1 record restored, 1 record it created deleted, 2 records left alone".
  function undoneCounts(r) {
    const removed = Number(r.removed || 0);
    const restored = r.restored.length - removed;
    const parts = [];
    if (restored || !removed) parts.push(`${plural(restored, "record")} restored`);
    if (removed) parts.push(`${plural(removed, "record")} it created deleted`);
    if (r.left_alone.length) parts.push(`${plural(r.left_alone.length, "record")} left alone`);
    return parts.join("; ");
  }

  function undoReportBlock(id) {
    const u = undoState.get(id);
    if (!u) return null;
    if (u.busy) return el("p", { className: "job-line", text: "Undoing the import…" });
    if (u.error) return el("p", { className: "job-error", text: `Not undone: ${u.error}` });
    const r = u.report;
    const parts = [`Import undone: ${undoneCounts(r)}`];
    const box = el("div", { className: "undo-report", role: "group", tabindex: "-1", "aria-label": `Undo report for sync #${id}` },
      el("p", { className: "job-line", text: `${parts.join("; ")}.` }));
    if (r.note) box.append(el("p", { className: "job-line undo-note", text: `${r.note[0].toUpperCase()}${r.note.slice(1)}.` }));
    if (r.left_alone.length) {
      box.append(el("ul", { className: "issues-list" }, ...r.left_alone.map((x) =>
        el("li", { dataset: { kind: "warning" } },
          el("span", { className: "issue-where", text: `${x.entity === "policy" ? "Policy" : "Customer"} ${labelFor(x.entity, x.record_id)}` }),
          el("span", { className: "issue-reason", text: x.reason })))));
    }
    return box;
  }

  function displayState(job) {
    return isRetryWaiting(job) ? "retry" : job.state;
  }

  function jobSignature(job) {
    return JSON.stringify([job.state, job.position, job.waiting_for, job.attempts, job.progress,
      job.error, job.cancel_requested, job.finished_at, job.run_after, job.result ? Boolean(job.result.brief) : null, undoState.get(job.id) || null,
      job.saved_changes, job.undoable,
      writtenBack.has(job.id)]);
  }

  function renderJob(li, job) {
    li.dataset.jobId = String(job.id);
    li.dataset.state = job.state;
    li.dataset.display = displayState(job);
    li.dataset.kind = job.kind;
    const sig = jobSignature(job);
    if (li.dataset.sig === sig) return;
    li.dataset.sig = sig;
    const kind = KIND[job.kind] || job.kind;
    const shown = displayState(job);
    const head = el("div", { className: "job-head" },
      el("span", { className: "job-title" }, el("span", { text: kind }), " ", el("span", { className: "muted", text: `#${job.id}` })),
      el("span", { className: `job-state state-${shown}`, text: STATE_WORDS[shown] || job.state }));
    const body = [head];
    const actions = [];
    if (shown === "retry") {
      body.push(el("p", { className: "job-line", text: `Attempt ${job.attempts} did not finish: ${plainReason(job.error)}` }));
      const next = job.run_after ? `Next try at ${fmtDateTime(job.run_after)}` : "Next try soon";
      body.push(el("p", { className: "job-line", text: `${next} (attempt ${Number(job.attempts) + 1}).` }));
      const kept = Number(job.saved_changes || 0);
      if (kept) {
        body.push(el("p", { className: "job-line job-saved",
          text: `Its import was saved: ${plural(kept, "record")} changed, and ${kept === 1 ? "it stays" : "they stay"}. The next try goes on from there.` }));
      }
    } else if (job.state === "queued") {
      const bits = [];
      if (job.position) bits.push(job.position === 1 ? "Next in your queue" : `Position ${job.position} in your queue`);
      if (job.waiting_for) bits.push(`waiting for ${job.waiting_for}`);
      if (bits.length) body.push(el("p", { className: "job-line", text: bits.join(" · ") }));
    } else if (job.state === "running") {
      body.push(progressBlock(job));
    } else {
      // An import that failed or was stopped after it committed: what it changed stays.
      const saved = job.state !== "succeeded" ? Number(job.saved_changes || 0) : 0;
      if (job.finished_at) body.push(el("p", { className: "job-line muted", text: `Finished ${fmtDateTime(job.finished_at)}${duration(job)}` }));
      if (job.state === "succeeded") {
        body.push(el("p", { className: "job-summary", text: job.result ? summaryWords(job.result.summary) : "Finished." }));
        if (job.cancel_requested) {
          const done = job.kind === "from_sheet" ? "the import was already saved" : "the sheet was already written";
          body.push(el("p", { className: "job-line job-late-stop", text: `Your stop came too late: ${done}.` }));
        }
        if (job.kind === "from_sheet" && changedCount(job) > 0) {
          if (job.undoable === 0 && !undoState.has(job.id)) {
            body.push(el("p", { className: "job-line job-undone", text: "This import was undone." }));
          } else offerUndo(job, actions);
        }
      } else if (job.state === "failed") {
        body.push(el("p", { className: "job-error" }, el("strong", { text: "Reason: " }), plainReason(job.error)));
        body.push(el("p", { className: "job-advice" }, el("strong", { text: "What to do: " }), adviceFor(job)));
        const again = el("button", { type: "button", className: "btn btn-small job-again",
          text: "Try again", "aria-label": `Try ${kind} again` });
        again.dataset.again = job.kind.replace("_", "-");
        actions.push(again);
      } else if (job.state === "cancelled" && !saved) {
        body.push(el("p", { className: "job-line", text: job.started_at ? "Stopped before finishing." : "Cancelled before it started." }));
      }
      if (saved) {
        const how = job.state === "cancelled" ? "Stopped" : "It failed";
        body.push(el("p", { className: "job-line job-saved",
          text: `${how} after its import was saved: ${plural(saved, "record")} changed, and ${saved === 1 ? "it stays" : "they stay"}.` }));
        offerUndo(job, actions);
      }
      const gone = deletedInSheet(job.result);
      if ((gone.count > 0 || gone.body.all) && !writtenBack.has(job.id)) {
        const rows = gone.body.all ? "all rows" : `the ${plural(gone.count, "row")}`;
        const writeBack = el("button", { type: "button", className: "btn btn-small job-write-back",
          text: gone.label, "aria-label": `Write ${rows} deleted from the sheet back to it (sync #${job.id})` });
        writeBack.dataset.writeBackJob = String(job.id);
        actions.push(writeBack);
      }
      const undoBlock = undoReportBlock(job.id);
      if (undoBlock) body.push(undoBlock);
      if (job.result) {
        const details = issuesDetails(job);
        if (details) {
          if (li.querySelector("details.job-issues[open]")) details.open = true;
          body.push(details);
        }
      }
    }
    if (!FINAL.has(job.state)) {
      if (job.cancel_requested) {
        body.push(el("p", { className: "job-line", text: "Stopping at the next safe point…" }));
      } else {
        const verb = job.state === "running" ? "Stop" : "Cancel";
        const cancel = el("button", { type: "button", className: "btn btn-small job-cancel",
          text: verb, "aria-label": `${verb} ${kind} #${job.id}` });
        cancel.dataset.cancelJob = String(job.id);
        actions.push(cancel);
      }
    }
    if (actions.length) body.push(el("div", { className: "job-actions" }, ...actions));
    // Keep keyboard focus on a button that is rebuilt with the same role, or
    // on the issues' toggle.
    const active = li.contains(document.activeElement) ? document.activeElement : null;
    li.replaceChildren(...body);
    if (active) {
      const again = active.tagName === "SUMMARY"
        ? li.querySelector("details.job-issues > summary")
        : li.querySelector(`button[class="${active.className}"]`);
      if (again) again.focus();
    }
  }

  function jobEl(job) {
    let li = jobEls.get(job.id);
    if (!li) {
      li = el("li", { className: "job" });
      jobEls.set(job.id, li);
    }
    renderJob(li, job);
    return li;
  }

  function placeJobs(list, items) {
    const wanted = items.map(jobEl);
    // Reorder with minimal DOM moves so focus inside a job is kept.
    wanted.forEach((li, i) => {
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    });
    while (list.children.length > wanted.length) list.lastElementChild.remove();
  }

  // Queue positions move when an earlier job finishes; the stream sends only
  // the job that changed, so work out what the others now wait for.
  function withLocalQueue(active) {
    return active.map((job, i) => {
      if (job.state !== "queued") return job;
      const out = { ...job, position: i + 1 };
      const earlier = /^your earlier sync #\d+$/.test(job.waiting_for || "");
      if (i > 0 && (earlier || !job.waiting_for)) out.waiting_for = `your earlier sync #${active[0].id}`;
      else if (i === 0 && earlier) out.waiting_for = "a free worker";
      return out;
    });
  }

  let renderQueued = false;
  // The history shows the recent syncs the status names, and older ones a
  // page at a time on request (their undo and write-back stay reachable);
  // once asked for, none drops off as new syncs finish.
  const history = { limit: RECENT_LIMIT, more: true, expanded: false };
  const olderButton = $("#older-jobs");

  // The page of finished syncs before the oldest of ``shown`` (a list's job
  // views), said out loud; null where it could not be loaded, also said.
  async function olderPage(button, shown, everyone = false) {
    const finished = shown.filter((j) => FINAL.has(j.state)).map((j) => j.id);
    const params = new URLSearchParams({ limit: String(RECENT_LIMIT) });
    if (everyone) params.set("all_users", "true");
    if (finished.length) params.set("before", String(Math.min(...finished)));
    button.disabled = true;
    try {
      const page = await api("GET", `/api/insurance/sync/jobs?${params}`);
      announce(page.jobs.length ? `${plural(page.jobs.length, "older sync")} shown.` : "There are no older syncs.");
      return page;
    } catch (err) {
      announce(`Could not load older syncs: ${err.message}`, "error");
      return null;
    } finally {
      button.disabled = false;
    }
  }

  async function showOlder() {
    const hadFocus = document.activeElement === olderButton;
    const page = await olderPage(olderButton, Array.from(jobs.values()));
    if (!page) return;
    for (const job of page.jobs) upsertJob(job);
    history.limit = Infinity;
    history.expanded = true;
    history.more = page.more;
    render();
    // The first of them takes the focus: the button may be gone.
    if (page.jobs.length && hadFocus) focusJob(page.jobs[0].id);
  }
  olderButton.addEventListener("click", showOlder);

  function render() {
    if (renderQueued) return;
    renderQueued = true;
    // Once per task: a burst of events re-renders once.
    Promise.resolve().then(renderNow);
  }

  function renderNow() {
    renderQueued = false;
    const all = Array.from(jobs.values());
    const running = all.filter((j) => j.state === "running").sort((a, b) => a.id - b.id);
    const queued = all.filter((j) => j.state === "queued").sort((a, b) => a.id - b.id);
    const active = withLocalQueue([...running, ...queued].sort((a, b) => a.id - b.id));
    const recent = all.filter((j) => FINAL.has(j.state)).sort((a, b) => b.id - a.id);
    for (const old of recent.slice(history.limit)) jobs.delete(old.id);
    const shownRecent = recent.slice(0, history.limit);
    olderButton.hidden = !(history.more && (history.expanded || shownRecent.length >= history.limit));
    const activeOrdered = [...active.filter((j) => j.state === "running"), ...active.filter((j) => j.state === "queued")];
    placeJobs(activeList, activeOrdered);
    placeJobs(recentList, shownRecent);
    for (const id of Array.from(jobEls.keys())) {
      if (!jobs.has(id)) { jobEls.get(id).remove(); jobEls.delete(id); }
    }
    $("#no-active-jobs").hidden = activeOrdered.length > 0;
    $("#no-recent-jobs").hidden = shownRecent.length > 0;
    showSyncMessage(active);
  }

  // The message by the sync buttons follows the newest job queued from this
  // page: its place in the queue, then running; once it finished, the job's
  // own entry (and the announcement) says how it went, and the message goes.
  function showSyncMessage(active) {
    if (!messageJob) return;
    const job = active.find((j) => j.id === messageJob);
    let text = "";
    if (job && job.state === "running") text = "Sync running";
    else if (job && isRetryWaiting(job)) text = "Sync waiting to try again";
    else if (job) text = job.position > 1 ? `Sync queued (position ${job.position})` : "Sync queued";
    if (!text) {
      // The note outlives the job's message: it stays until the next sync.
      messageJob = 0;
      setSyncMessage(messageNote, messageNote ? "warning" : null);
      return;
    }
    setSyncMessage(messageNote ? `${text}. ${messageNote}` : text, "ok");
  }

  function setSyncMessage(text, kind) {
    // Unchanged text is left alone, so a screen reader does not repeat it.
    if (syncMessage.textContent !== text) syncMessage.textContent = text;
    if (kind) syncMessage.dataset.kind = kind;
    else delete syncMessage.dataset.kind;
  }

  function hasActive() {
    for (const job of jobs.values()) if (!FINAL.has(job.state)) return true;
    return false;
  }

  // React once to each state a job reaches: announce it, patch imported rows.
  function noticeTransition(job) {
    const before = seenState.get(job.id);
    if (before === job.state) return;
    seenState.set(job.id, job.state);
    if (!FINAL.has(job.state)) return;
    if (job.state === "succeeded" && job.kind === "from_sheet" && !refreshed.has(job.id)) {
      refreshed.add(job.id);
      silentRefresh(job).catch((err) => announce(`Could not refresh imported rows: ${err.message}`, "error"));
    }
    if (job.state === "succeeded") announce(`${KIND[job.kind] || job.kind} #${job.id} finished: ${job.result ? summaryWords(job.result.summary) : "done"}.`);
    else if (job.state === "failed") announce(`${KIND[job.kind] || job.kind} #${job.id} failed: ${plainReason(job.error)}`, "error");
    conflicts.refreshSoon();
  }

  function applyJob(job) {
    if (!job || typeof job.id !== "number") return;
    if (!upsertJob(job)) return;
    noticeTransition(jobs.get(job.id));
    render();
  }

  // A full snapshot: the stream's opening event or a poll answer.
  function applySnapshot(status) {
    const listed = [...(status.running || []), ...(status.queued || []), ...(status.recent || [])];
    const ids = new Set(listed.map((j) => j.id));
    const newest = listed.reduce((m, j) => Math.max(m, j.id), 0);
    const oldestRecent = (status.recent || []).reduce((m, j) => Math.min(m, j.id), Infinity);
    for (const job of listed) upsertJob(job);
    for (const [id, job] of Array.from(jobs)) {
      // Jobs queued after the snapshot was taken stay, and older syncs shown
      // on request (the history's length trims them); others left the history.
      const queuedSince = id > newest && !FINAL.has(job.state);
      const older = FINAL.has(job.state) && id < oldestRecent;
      if (!ids.has(id) && !queuedSince && !older) jobs.delete(id);
    }
    for (const job of listed) {
      const current = jobs.get(job.id);
      // The first snapshot is history, not news (except jobs queued from this page).
      if (firstSnapshot && !seenState.has(job.id)) seenState.set(job.id, current.state);
      else noticeTransition(current);
    }
    firstSnapshot = false;
    render();
  }

  // ---------------------------------------------------------------- sync: transport

  // The event stream is the source; polling covers for it while it is down.
  const liveState = $("#live-state");
  const live = { source: null, connected: false, retryMs: 1000, retryTimer: null, fallbackTimer: null };
  const poll = { on: false, timer: null, inflight: false, again: false };

  function setLiveState(mode) {
    if (!liveState) return;
    const words = {
      connecting: "Connecting…",
      live: "Live updates",
      polling: "Reconnecting; checking for updates meanwhile",
    };
    liveState.dataset.mode = mode;
    $(".live-text", liveState).textContent = words[mode] || mode;
  }

  function connectStream() {
    clearTimeout(live.retryTimer);
    live.retryTimer = null;
    if (live.source || typeof window.EventSource !== "function") {
      if (!live.source) startPolling();
      return;
    }
    const source = new EventSource("/api/insurance/sync/events");
    live.source = source;
    clearTimeout(live.fallbackTimer);
    // A stream that opens but says nothing (a buffering proxy) is no stream.
    live.fallbackTimer = setTimeout(() => { if (!live.connected) startPolling(); }, 4000);
    source.addEventListener("status", (e) => {
      if (live.source !== source) return;
      let data;
      try { data = JSON.parse(e.data); } catch (err) { return; }
      live.connected = true;
      live.retryMs = 1000;
      clearTimeout(live.fallbackTimer);
      stopPolling();
      setLiveState("live");
      applySnapshot(data);
    });
    source.addEventListener("job", (e) => {
      if (live.source !== source) return;
      try { applyJob(JSON.parse(e.data)); } catch (err) { /* a malformed event changes nothing */ }
    });
    source.addEventListener("error", () => {
      if (live.source !== source) return;
      // Take over from the browser's own retry: poll meanwhile, reconnect with backoff.
      source.close();
      live.source = null;
      live.connected = false;
      clearTimeout(live.fallbackTimer);
      setLiveState("polling");
      startPolling();
      const wait = live.retryMs * (0.8 + Math.random() * 0.4);
      live.retryMs = Math.min(live.retryMs * 2, 30000);
      live.retryTimer = setTimeout(connectStream, wait);
    });
  }

  function startPolling() {
    if (poll.on) return;
    poll.on = true;
    schedulePoll(0);
  }

  function stopPolling() {
    poll.on = false;
    clearTimeout(poll.timer);
    poll.timer = null;
  }

  function schedulePoll(ms) {
    clearTimeout(poll.timer);
    poll.timer = setTimeout(pollStatus, ms);
  }

  function pollSoon() {
    if (!poll.on) return;
    if (poll.inflight) poll.again = true;
    else schedulePoll(0);
  }

  async function pollStatus() {
    poll.timer = null;
    if (!poll.on || poll.inflight) return;
    poll.inflight = true;
    let delay = POLL_IDLE_MS;
    try {
      const status = await api("GET", "/api/insurance/sync/status");
      if (poll.on) applySnapshot(status);
      delay = hasActive() ? POLL_ACTIVE_MS : POLL_IDLE_MS;
    } catch (err) {
      delay = POLL_ERROR_MS;
    } finally {
      poll.inflight = false;
      if (poll.again) { poll.again = false; delay = 0; }
      if (poll.on) schedulePoll(delay);
    }
  }

  window.addEventListener("online", () => { if (!live.source) { live.retryMs = 1000; connectStream(); } });

  // ---------------------------------------------------------------- sync: actions

  let lastQueuedId = 0;

  // kind: "to-sheet" | "from-sheet"; a write-back is a sync to the sheet.
  async function startSync(kind, writeBack) {
    try {
      const res = writeBack
        ? await api("POST", "/api/insurance/sync/write-back", writeBack)
        : await api("POST", `/api/insurance/sync/${kind}`);
      // Answers may arrive out of order: show the newest job's position.
      if (res.job_id >= lastQueuedId) {
        lastQueuedId = res.job_id;
        messageJob = res.job_id;
        messageNote = res.message || "";
      }
      // Show the job right away; the stream (or a poll) fills in the details.
      if (!jobs.has(res.job_id)) applyJob({ id: res.job_id, kind: kind.replace("-", "_"), state: "queued", position: res.position,
        waiting_for: null, attempts: 0, progress: null, result: null, error: null });
      render(); // the message, for a job the stream had already shown
      pollSoon();
    } catch (err) {
      messageJob = 0;
      messageNote = "";
      setSyncMessage(`Could not queue the sync: ${err.message}`, "error");
    }
  }

  $("#sync-to-sheet").addEventListener("click", (e) => startSync(e.currentTarget.dataset.kind));
  $("#sync-from-sheet").addEventListener("click", (e) => startSync(e.currentTarget.dataset.kind));

  // The job whose button went away (its Cancel, once pressed) takes the
  // focus, so that the keyboard stays where the user was.
  function focusJob(id) {
    // After the render this task queued, which may move the entry from the
    // queue to the history: moving an element drops its focus.
    Promise.resolve().then(() => {
      const li = jobEls.get(id);
      if (!li || !document.contains(li)) return;
      li.tabIndex = -1;
      li.focus();
    });
  }

  async function cancelJob(button) {
    const id = Number(button.dataset.cancelJob);
    button.disabled = true;
    const hadFocus = document.activeElement === button;
    try {
      const job = await api("POST", `/api/insurance/sync/jobs/${id}/cancel`);
      applyJob(job);
      announce(job.state === "cancelled" ? `Sync #${id} cancelled.` : `Sync #${id} will stop at the next safe point.`);
      if (hadFocus) focusJob(id);
    } catch (err) {
      if (err.status === 409 && err.body && err.body.job) {
        applyJob(err.body.job); // it finished meanwhile: show how it ended
        announce(`Sync #${id} had already finished; there was nothing to stop.`);
        if (hadFocus) focusJob(id);
      } else {
        button.disabled = false;
        announce(`Could not cancel sync #${id}: ${err.message}`, "error");
      }
    }
    pollSoon();
  }

  async function undoImport(button) {
    const id = Number(button.dataset.undoJob);
    if (!button.classList.contains("confirming")) {
      button.classList.add("confirming");
      button.textContent = "Confirm undo";
      button.setAttribute("aria-label", `Confirm: undo import #${id}`);
      announce(`Press "Confirm undo" to put back what sync #${id} imported.`);
      button._disarm = setTimeout(() => {
        button.classList.remove("confirming");
        button.textContent = "Undo import";
        button.setAttribute("aria-label", `Undo import #${id}`);
      }, 5000);
      return;
    }
    clearTimeout(button._disarm);
    undoState.set(id, { busy: true });
    const job = jobs.get(id);
    if (job) renderJob(jobEl(job), job);
    let report = null;
    try {
      report = await api("POST", `/api/insurance/sync/jobs/${id}/undo`);
      undoState.set(id, { report });
    } catch (err) {
      undoState.set(id, { error: err.message });
    }
    const again = jobs.get(id);
    if (again) renderJob(jobEl(again), again);
    const li = jobEls.get(id);
    const focusTarget = li && (li.querySelector(".undo-report") || li.querySelector("button"));
    if (focusTarget) focusTarget.focus();
    if (report) {
      announce(`Import #${id} undone: ${undoneCounts(report)}.`);
      const ids = { customer: [], policy: [] };
      for (const r of report.restored) if (ids[r.entity]) ids[r.entity].push(Number(r.record_id));
      refreshRecords(ids, "This record was changed by undoing an import.").catch(() => {});
      conflicts.refreshSoon();
    } else {
      announce(`Could not undo import #${id}: ${undoState.get(id).error}`, "error");
    }
  }

  $("#jobs").addEventListener("click", (e) => {
    const button = e.target.closest("button");
    if (!button || button.disabled) return;
    if (button.classList.contains("job-cancel")) cancelJob(button);
    else if (button.classList.contains("job-undo")) undoImport(button);
    else if (button.classList.contains("job-again")) startSync(button.dataset.again);
    else if (button.classList.contains("job-write-back")) {
      const job = jobs.get(Number(button.dataset.writeBackJob));
      if (!job) return;
      writtenBack.add(job.id); // the sync it queues reports what is still missing
      renderJob(jobEl(job), job);
      startSync("to-sheet", deletedInSheet(job.result).body);
    }
  });

  // ---------------------------------------------------------------- silent refresh

  // The records with these IDs; with a list, only those its search and
  // filters show.
  async function fetchByIds(entity, ids, list = null) {
    const out = [];
    const unique = Array.from(new Set(ids.map(Number))).filter((n) => Number.isInteger(n) && n > 0);
    for (let i = 0; i < unique.length; i += BATCH) {
      const chunk = unique.slice(i, i + BATCH);
      const params = new URLSearchParams({ ids: chunk.join(","), limit: String(chunk.length), offset: "0" });
      if (list) withListFilters(params, list);
      const page = await api("GET", `${ENTITIES[entity].url}?${params}`);
      out.push(...page.items);
    }
    return out;
  }

  // Patch the given records where they are on screen (or open in the form);
  // rows whose record is gone are removed. Returns how many rows changed.
  async function refreshRecords(ids, why) {
    const wanted = { customer: new Set(), policy: new Set() };
    const changedCustomers = new Set((ids.customer || []).map(Number));
    for (const id of changedCustomers) if (lists.customer.records.has(id)) wanted.customer.add(id);
    for (const id of (ids.policy || []).map(Number)) if (lists.policy.records.has(id)) wanted.policy.add(id);
    // A renamed customer shows up in the Customer column of policies.
    for (const p of lists.policy.records.values()) {
      if (changedCustomers.has(p.customer_id)) wanted.policy.add(p.id);
    }
    if (editor.entity && editor.id !== null) {
      const set = editor.entity === "customer" ? changedCustomers : new Set((ids.policy || []).map(Number));
      if (set.has(editor.id)) wanted[editor.entity].add(editor.id);
    }
    let patched = 0;
    for (const entity of ["customer", "policy"]) {
      if (!wanted[entity].size) continue;
      const records = await fetchByIds(entity, Array.from(wanted[entity]));
      const found = new Set();
      for (const record of records) {
        found.add(record.id);
        labels.set(`${entity}:${record.id}`, ENTITIES[entity].title(record));
        const old = lists[entity].records.get(record.id);
        if (!old || old.version !== record.version || old.customer !== record.customer) {
          if (patchRecord(lists[entity], record)) patched++;
        }
        if (editor.entity === entity && editor.id === record.id && record.version !== editor.version) {
          if (isDirty()) offerReload(record, `${why} Your typing is kept; reload to see the new values.`);
          else { loadIntoForm(record); showFormNotice(`${why} The form now shows the new values.`, [], "info"); }
        }
      }
      const list = lists[entity];
      for (const id of wanted[entity]) {
        if (found.has(id) || !list.records.has(id)) continue;
        const tr = rowFor(list, id);
        list.records.delete(id);
        if (tr) { tr.remove(); patched++; }
        list.total = Math.max(0, list.total - 1);
        updatePager(list);
        if (editor.entity === entity && editor.id === id) showFormNotice("This record no longer exists.", []);
      }
    }
    return patched;
  }

  // Records an import created: shown at the top of their list, as one
  // created here is, where they match its search and filters.
  async function showCreated(entity, ids) {
    const list = lists[entity];
    const fresh = ids.map(Number).filter((id) => !list.records.has(id));
    if (!list.loaded || !fresh.length) return 0;
    let shown = 0;
    for (const record of await fetchByIds(entity, fresh, list)) {
      if (list.records.has(record.id)) continue;
      list.records.set(record.id, record);
      const tr = buildRow(record, list);
      list.tbody.prepend(tr);
      flash(tr);
      shown++;
    }
    list.total += shown;
    updatePager(list);
    return shown;
  }

  async function silentRefresh(job) {
    const result = job.result || {};
    const changed = result.changed || {};
    const changedCustomers = (changed.customer || []).map(Number);
    const changedPolicies = (changed.policy || []).map(Number);
    if (!changedCustomers.length && !changedPolicies.length) return;
    // A big import's result lists only some of its records: look again at
    // every one on screen (and in the editor) instead.
    const ids = result.changed_cut
      ? { customer: [...lists.customer.records.keys()], policy: [...lists.policy.records.keys()] }
      : { customer: changedCustomers, policy: changedPolicies };
    if (result.changed_cut && editor.entity && editor.id !== null) ids[editor.entity].push(editor.id);
    const patched = await refreshRecords(ids, "This record was changed by a sheet import.");
    const created = result.created || {};
    const added = (await showCreated("customer", created.customer || []))
      + (await showCreated("policy", created.policy || []));
    const onScreen = [
      patched ? `${plural(patched, "row")} on screen updated` : "",
      added ? `${plural(added, "new row")} shown` : "",
    ].filter(Boolean).map((part) => `; ${part}`).join("");
    if (result.changed_cut) {
      announce(`Sheet import finished: ${summaryWords(result.summary)}${onScreen}.`);
      return;
    }
    const parts = [];
    if (changedCustomers.length) parts.push(plural(changedCustomers.length, "customer"));
    if (changedPolicies.length) parts.push(plural(changedPolicies.length, "policy", "policies"));
    announce(`Sheet import changed ${parts.join(" and ")}${onScreen}.`);
  }

  // ---------------------------------------------------------------- conflicts

  const labels = new Map(); // "entity:id" -> a name people recognise

  function labelFor(entity, id) {
    const record = lists[entity] && lists[entity].records.get(Number(id));
    if (record) return ENTITIES[entity].title(record);
    return labels.get(`${entity}:${id}`) || `#${id}`;
  }

  const conflicts = (() => {
    const listEl = $("#conflict-list");
    const countEl = $("#conflicts-count");
    const link = $("#conflicts-link");
    const els = new Map(); // conflict id -> <li>
    const notes = new Map(); // conflict id -> why it was not resolved, kept over a rebuild
    const state = { inflight: false, again: false, timer: null, items: [] };

    // A value longer than this scrolls in its box (reachable by Tab), so a
    // long note keeps the choices next to it.
    const LONG_VALUE = 160;

    function valueBox(label, value, cls, text = canonical(value)) {
      const empty = value === null || value === undefined || value === "";
      const long = text.length > LONG_VALUE;
      const dd = el("dd", { className: empty ? "empty" : long ? "long" : "", text });
      if (long) dd.tabIndex = 0;
      return el("div", { className: `conflict-value ${cls}` }, el("dt", { text: label }), dd);
    }

    function valuesList(c) {
      return el("dl", { className: "conflict-values" },
        valueBox("App", c.app, "is-app"),
        valueBox("Sheet", c.sheet, "is-sheet"),
        valueBox("Last synced", c.base, "is-base", baseText(c)));
    }

    function signature(c) {
      return JSON.stringify([c.app, c.sheet, c.base, c.base_known, c.row, c.column, c.book, labelFor(c.entity, c.record_id)]);
    }

    function build(li, c) {
      const what = `${c.entity === "policy" ? "Policy" : "Customer"} ${labelFor(c.entity, c.record_id)}`;
      // An admin sees every book's conflicts: each says whose it is.
      const book = IS_ADMIN && c.book ? `${c.book}'s sheet` : null;
      const where = [book, c.column || c.field, c.row ? `sheet row ${c.row}` : null].filter(Boolean).join(" · ");
      const titleId = `conflict-${c.id}-title`;
      li.setAttribute("aria-labelledby", titleId);
      const form = el("form", { className: "conflict-editor", novalidate: true, hidden: true });
      const inputId = `conflict-${c.id}-value`;
      const errId = `conflict-${c.id}-error`;
      form.append(
        el("label", { for: inputId, text: `New value for ${c.column || c.field}` }),
        el("input", { id: inputId, name: "value", type: "text", autocomplete: "off", "aria-describedby": errId }),
        el("p", { className: "field-error", id: errId }),
        el("div", { className: "conflict-actions" },
          el("button", { type: "submit", className: "btn btn-small btn-primary", text: "Save value" }),
          el("button", { type: "button", className: "btn btn-small conflict-edit-cancel", text: "Cancel" })));
      const btn = (choice, text, label) => {
        const b = el("button", { type: "button", className: `btn btn-small conflict-${choice}`, text, "aria-label": `${label} for ${what}, ${c.column || c.field}` });
        b.dataset.choice = choice;
        return b;
      };
      li.replaceChildren(
        el("p", { className: "conflict-title", id: titleId },
          el("span", { className: "conflict-record", text: what }),
          el("span", { className: "conflict-where muted", text: where })),
        valuesList(c),
        el("div", { className: "conflict-actions" },
          btn("app", "Keep app", "Keep the app's value"),
          btn("sheet", "Keep sheet", "Keep the sheet's value"),
          btn("edit", "Edit…", "Type another value")),
        el("p", { className: "conflict-error", role: "alert", text: notes.get(c.id) || "" }),
        form);
    }

    function render(items) {
      state.items = items;
      const wanted = items.map((c) => {
        let li = els.get(c.id);
        if (!li) {
          li = el("li", { className: "conflict", dataset: { conflictId: String(c.id), entity: c.entity, recordId: String(c.record_id), field: c.field } });
          els.set(c.id, li);
        }
        const sig = signature(c);
        // Never rebuild under someone typing a value: redraw only the values.
        const editing = li.querySelector("form.conflict-editor:not([hidden])");
        if (li.dataset.sig !== sig) {
          li.dataset.sig = sig;
          if (editing) $("dl.conflict-values", li).replaceWith(valuesList(c));
          else build(li, c);
        }
        return li;
      });
      wanted.forEach((li, i) => { if (listEl.children[i] !== li) listEl.insertBefore(li, listEl.children[i] || null); });
      const ids = new Set(items.map((c) => c.id));
      for (const [id, li] of Array.from(els)) if (!ids.has(id)) { li.remove(); els.delete(id); notes.delete(id); }
      const n = items.length;
      countEl.hidden = n === 0;
      countEl.textContent = String(n);
      $("#no-conflicts").hidden = n > 0;
      $("#conflicts-help").hidden = n === 0;
      link.hidden = n === 0;
      link.textContent = `${plural(n, "conflict")} to resolve`;
    }

    async function fetchLabels(items) {
      const missing = { customer: new Set(), policy: new Set() };
      for (const c of items) {
        if (missing[c.entity] && labelFor(c.entity, c.record_id) === `#${c.record_id}`) missing[c.entity].add(c.record_id);
      }
      for (const entity of Object.keys(missing)) {
        if (!missing[entity].size) continue;
        try {
          for (const r of await fetchByIds(entity, Array.from(missing[entity]))) labels.set(`${entity}:${r.id}`, ENTITIES[entity].title(r));
        } catch (err) { /* the ID is shown instead */ }
      }
    }

    async function refresh() {
      if (state.inflight) { state.again = true; return; }
      state.inflight = true;
      try {
        const data = await api("GET", "/api/insurance/sync/conflicts");
        const items = data.conflicts || [];
        render(items);
        await fetchLabels(items);
        render(items);
      } catch (err) {
        /* shown again on the next refresh */
      } finally {
        state.inflight = false;
        if (state.again) { state.again = false; refresh(); }
      }
    }

    function refreshSoon() {
      clearTimeout(state.timer);
      state.timer = setTimeout(refresh, 150);
    }

    function showError(li, text) {
      const p = $(".conflict-error", li);
      p.textContent = text;
      if (text) notes.set(Number(li.dataset.conflictId), text);
      else notes.delete(Number(li.dataset.conflictId));
    }

    async function resolve(li, choice, value) {
      const id = Number(li.dataset.conflictId);
      const c = state.items.find((x) => x.id === id);
      const buttons = $$("button", li);
      buttons.forEach((b) => { b.disabled = true; });
      li.setAttribute("aria-busy", "true");
      showError(li, "");
      const body = { choice };
      if (choice === "edit") body.value = value;
      try {
        await api("POST", `/api/insurance/sync/conflicts/${id}/resolve`, body);
        const column = c ? (c.column || c.field) : "the value";
        const words = {
          app: `Kept the app's ${column}; the next Sync to sheet writes it to the sheet.`,
          sheet: `Kept the sheet's ${column}; the app has it now.`,
          edit: `Saved the new ${column}; the next Sync to sheet writes it to the sheet.`,
        };
        announce(words[choice]);
        // Move focus somewhere sensible before the item disappears.
        const next = li.nextElementSibling || li.previousElementSibling;
        els.delete(id);
        li.remove();
        state.items = state.items.filter((x) => x.id !== id);
        render(state.items);
        const target = next ? $("button", next) : $("#conflicts");
        if (target) target.focus();
        if (c && choice !== "app") {
          const ids = { customer: [], policy: [] };
          ids[c.entity].push(c.record_id);
          refreshRecords(ids, "This record was changed by resolving a sync conflict.").catch(() => {});
        }
        refreshSoon();
      } catch (err) {
        buttons.forEach((b) => { b.disabled = false; });
        li.removeAttribute("aria-busy");
        if (err.status === 422 && err.body && Array.isArray(err.body.detail)) {
          const msgs = err.body.detail.map((d) => String(d.msg || "invalid").replace(/^(Value|Assertion) error, /, ""));
          if (choice === "edit") {
            const input = $("input[name=value]", li);
            $(".conflict-editor .field-error", li).textContent = msgs.join(" ");
            input.setAttribute("aria-invalid", "true");
            input.focus();
          } else {
            showError(li, `Not resolved: ${msgs.join(" ")}`);
          }
        } else if (err.status === 409 || err.status === 404) {
          // Settled elsewhere (it goes from the list, so the page says what
          // was kept), or its app value changed since: the list shows the
          // value the app has now.
          showError(li, `Not resolved: ${err.message}`);
          announce(`Not resolved: ${err.message}`, "error");
          refreshSoon();
        } else {
          showError(li, `Not resolved: ${err.message}`);
        }
      }
    }

    listEl.addEventListener("click", (e) => {
      const button = e.target.closest("button");
      if (!button || button.disabled) return;
      const li = button.closest("li.conflict");
      const form = $("form.conflict-editor", li);
      if (button.dataset.choice === "edit") {
        const c = state.items.find((x) => x.id === Number(li.dataset.conflictId));
        const input = $("input[name=value]", form);
        if (form.hidden) {
          form.hidden = false;
          input.value = c && c.app !== null && c.app !== undefined ? String(c.app) : "";
        }
        input.focus();
        input.select();
      } else if (button.dataset.choice) {
        resolve(li, button.dataset.choice);
      } else if (button.classList.contains("conflict-edit-cancel")) {
        form.hidden = true;
        $(".field-error", form).textContent = "";
        $("input", form).removeAttribute("aria-invalid");
        $("button.conflict-edit", li).focus();
      }
    });
    listEl.addEventListener("submit", (e) => {
      e.preventDefault();
      const form = e.target;
      const li = form.closest("li.conflict");
      const input = $("input[name=value]", form);
      input.removeAttribute("aria-invalid");
      const error = $(".field-error", form);
      // A blank value drops both sides' values: said first, done when asked
      // again; a field no record may leave empty says so at once.
      if (!input.value.trim() && (form.dataset.clearAsked !== "yes" || mustHave(li))) {
        const c = state.items.find((x) => x.id === Number(li.dataset.conflictId));
        const what = c && c.column ? c.column : "This field";
        if (mustHave(li)) {
          error.textContent = `${what} may not be empty: type a value, or keep one side's.`;
          input.setAttribute("aria-invalid", "true");
        } else {
          form.dataset.clearAsked = "yes";
          error.textContent = `Left blank, this clears ${what}: neither value is kept. Save again to clear it.`;
        }
        input.focus();
        return;
      }
      delete form.dataset.clearAsked;
      error.textContent = "";
      resolve(li, "edit", li.dataset.field === "premium" ? plainAmount(input.value.trim()) : input.value);
    });
    // Whether the conflict's field is one a record must have (the form says).
    function mustHave(li) {
      const spec = ENTITIES[li.dataset.entity];
      const field = spec && $(`${spec.fieldset} [name="${CSS.escape(li.dataset.field)}"]`);
      return Boolean(field && field.required);
    }
    listEl.addEventListener("input", (e) => {
      const form = e.target.closest("form.conflict-editor");
      if (form) delete form.dataset.clearAsked;
    });
    listEl.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && e.target.matches("form.conflict-editor input")) {
        e.preventDefault();
        $(".conflict-edit-cancel", e.target.closest("form")).click();
      }
    });
    link.addEventListener("click", (e) => {
      e.preventDefault();
      const section = $("#conflicts");
      section.scrollIntoView({ behavior: "smooth", block: "start" });
      const first = $("#conflict-list button");
      (first || section).focus({ preventScroll: true });
    });

    return { refresh, refreshSoon };
  })();

  // ---------------------------------------------------------------- everyone's syncs (admins)

  // Every user's syncs in brief, polled while the list is open: the live
  // stream and the history above stay about the admin's own.
  function everyonesSyncs() {
    const box = $("#all-syncs");
    if (!box) return;
    const list = $("#all-jobs");
    const olderAll = $("#older-all-jobs");
    const shown = new Map(); // job id -> view
    let timer = null;
    let more = false;

    const line = (job) => {
      const shownState = displayState(job);
      if (shownState === "retry" || job.state === "failed") return el("p", { className: "job-error", text: plainReason(job.error) });
      if (job.state === "queued") return el("p", { className: "job-line muted", text: `Waiting for ${job.waiting_for || "a free worker"}` });
      if (job.state === "running") {
        const phase = job.progress && job.progress.phase;
        return el("p", { className: "job-line muted", text: phase ? `Now ${phase}` : "Started" });
      }
      if (job.state === "succeeded") return el("p", { className: "job-line", text: job.result ? summaryWords(job.result.summary) : "Done" });
      return el("p", { className: "job-line muted", text: "Stopped before it finished" });
    };
    const entry = (job) => {
      const shownState = displayState(job);
      const when = job.finished_at || job.started_at || job.enqueued_at;
      return el("li", { className: "job", dataset: { jobId: String(job.id), state: job.state, display: shownState } },
        el("div", { className: "job-head" },
          el("span", { className: "job-title" },
            el("span", { className: "job-owner", text: job.owner || `user ${job.owner_id}` }), " · ",
            el("span", { text: KIND[job.kind] || job.kind }), " ",
            el("span", { className: "muted", text: `#${job.id}` })),
          el("span", { className: `job-state state-${shownState}`, text: STATE_WORDS[shownState] || job.state })),
        line(job),
        when ? el("p", { className: "job-line muted small", text: fmtDateTime(when) }) : null);
    };
    let drawn = "";
    const renderAll = () => {
      const items = Array.from(shown.values()).sort((a, b) => b.id - a.id);
      // Redrawn only when something changed: a reader's place in the list stays.
      const sig = JSON.stringify(items.map((j) => [j.id, j.state, j.attempts, j.waiting_for, j.progress && j.progress.phase, j.error, j.finished_at]));
      if (sig !== drawn) list.replaceChildren(...items.map(entry));
      drawn = sig;
      $("#no-all-jobs").hidden = items.length > 0;
      olderAll.hidden = !more;
    };
    const load = async () => {
      clearTimeout(timer);
      try {
        const status = await api("GET", "/api/insurance/sync/status?all_users=true");
        const listed = [...status.running, ...status.queued, ...status.recent];
        const oldest = listed.reduce((m, j) => Math.min(m, j.id), Infinity);
        // Older pages asked for stay; the rest is as the server lists it now.
        for (const id of Array.from(shown.keys())) if (id >= oldest) shown.delete(id);
        for (const job of listed) shown.set(job.id, job);
        if (!olderAll.dataset.asked) more = status.recent.length >= RECENT_LIMIT;
        renderAll();
      } catch (err) {
        announce(`Could not load everyone's syncs: ${err.message}`, "error");
      }
      if (box.open) timer = setTimeout(load, document.hidden ? POLL_IDLE_MS : ALL_SYNCS_POLL_MS);
    };
    box.addEventListener("toggle", () => {
      if (box.open) load();
      else clearTimeout(timer);
    });
    olderAll.addEventListener("click", async () => {
      const page = await olderPage(olderAll, Array.from(shown.values()), true);
      if (!page) return;
      for (const job of page.jobs) shown.set(job.id, job);
      olderAll.dataset.asked = "true";
      more = page.more;
      renderAll();
    });
  }

  // ---------------------------------------------------------------- sheet settings

  function sheetSettings() {
    const form = $("#target-form");
    const now = $("#target-now");
    const share = $("#target-share");
    const idInput = $("#target-spreadsheet");
    const idError = $("#err-spreadsheet_id");
    const fieldErrors = { spreadsheet_id: idError, backend: $("#err-backend"), delete_mode: $("#err-delete_mode") };
    const showIdField = () => {
      const google = form.elements.backend.value === "google";
      idInput.disabled = !google;
      share.hidden = !google;
    };
    const render = (target) => {
      form.elements.backend.value = target.backend;
      idInput.value = target.backend === "google" ? target.location : "";
      form.elements.delete_mode.value = target.delete_mode;
      now.textContent = target.backend === "google"
        ? `Syncing with Google spreadsheet ${target.location}.`
        : "Syncing with your workbook in the data folder.";
      share.textContent = target.share_with
        ? `Share the spreadsheet with ${target.share_with} (editor).`
        : "No service account is configured; share the spreadsheet with the account the server signs in as.";
      showIdField();
    };
    form.addEventListener("change", showIdField);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      for (const p of Object.values(fieldErrors)) p.textContent = "";
      const body = { backend: form.elements.backend.value, delete_mode: form.elements.delete_mode.value };
      if (body.backend === "google") body.spreadsheet_id = idInput.value.trim();
      try {
        render(await api("PATCH", "/api/insurance/sync/target", body));
        announce("Sheet settings saved.");
      } catch (err) {
        // Each refusal stays beside the setting it is about.
        const detail = err.body && Array.isArray(err.body.detail) ? err.body.detail : [];
        const placed = detail.filter((d) => fieldErrors[d.field]);
        for (const d of placed) fieldErrors[d.field].textContent = d.msg;
        if (!placed.length) announce(err.message, "error");
      }
    });
    api("GET", "/api/insurance/sync/target").then(render).catch(() => {});
  }

  // ---------------------------------------------------------------- start

  for (const list of Object.values(lists)) wireList(list);
  const statusFilter = $("#policy-status-filter");
  const lineFilter = $("#policy-line-filter");
  const onFilter = () => {
    lists.policy.filters = { status: statusFilter.value, line_of_business: lineFilter.value };
    lists.policy.offset = 0;
    loadList(lists.policy);
  };
  statusFilter.addEventListener("change", onFilter);
  lineFilter.addEventListener("change", onFilter);

  showTab("customer");
  // Load the other table too, so that silent refresh has rows to patch.
  loadList(lists.policy);
  connectStream();
  conflicts.refresh();
  // Another window may have settled some while this one was in the background.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") conflicts.refreshSoon();
  });
  sheetSettings();
  everyonesSyncs();
  // The editor opens below the top bar, whose height changes as it wraps.
  const topbar = document.querySelector(".topbar");
  new ResizeObserver(() => {
    document.documentElement.style.setProperty("--topbar-height", `${topbar.offsetHeight}px`);
  }).observe(topbar);

  // Expose a tiny hook for debugging in the console (no data, just state).
  window.sheetbridge = {
    lists, editor, jobs, pollSoon, refreshConflicts: conflicts.refresh,
    get transport() { return live.connected ? "stream" : poll.on ? "polling" : "connecting"; },
  };
})();
