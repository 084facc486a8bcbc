/* CerviCurve keypoints: the C2-C7 box and the 23 CSXA landmarks placed on a film in the browser.
 *
 * A Streamlit custom component (components.v1, declared with path= in ui/canvas.py) written against the
 * component protocol directly: the iframe posts {isStreamlitMessage, type} messages to window.parent
 * ("streamlit:componentReady", "streamlit:setComponentValue", "streamlit:setFrameHeight") and receives
 * "streamlit:render" with the arguments. No build step, no library, nothing fetched.
 *
 * Every click, drag, undo, zoom and window/level change stays here; Python hears from the component only when
 * the annotator acts on the whole film (save, save and go on, another film, a model draft), and then gets the
 * whole film in one message: {nonce, action, image_id, edit: {box, points, hidden, curvature_class, facing},
 * step, skip, save, discard, view}. Coordinates are full-image pixels (the film may be sent smaller).
 * Python answers by drawing the component again with `ack` = the message's nonce and the film's new `revision`.
 * Local edits are also kept in sessionStorage per film and revision, so a remounted iframe loses nothing.
 */
(function () {
  "use strict";

  // ------------------------------------------------------------------ protocol

  function post(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
  }
  function setValue(value) { post("streamlit:setComponentValue", { value: value, dataType: "json" }); }
  let lastHeight = -1;
  function sendHeight() {
    const height = Math.ceil(app.getBoundingClientRect().height) + 2;
    if (height !== lastHeight) {
      lastHeight = height;
      post("streamlit:setFrameHeight", { height: height });
    }
  }

  // ------------------------------------------------------------------ elements

  const $ = (id) => document.getElementById(id);
  const app = $("app"), canvas = $("view"), stage = $("stage"), side = $("side");
  const ctx = canvas.getContext("2d");
  const HIT_PX = 10;       // a drag that starts this close to a point or a box corner moves it
  const DRAG_PX = 4;       // a press that moves less than this is a click
  const MIN_BOX_PX = 6;    // a smaller drag in box mode is not a box
  const ZOOM_MIN = 0.5, ZOOM_MAX = 40;

  // ------------------------------------------------------------------ state

  let args = null;           // the latest render arguments
  let film = null;           // {key, width, height (as sent), gray: Uint8ClampedArray, windowed: canvas}
  let server = null;         // args.state: Python's copy of the film
  let token = null;          // image_id:uid:revision of the copy adopted
  let work = null;           // {box, points[23], hidden:Set, cls, facing}: the local copy
  let history = [];          // undo snapshots of `work`
  let localDirty = false;
  let mode = "points";
  let target = null;         // a point chosen in the diagram, else the next unplaced one
  let zoom = 1, centre = null; // zoom relative to fit, and the image point at the middle of the view
  let viewSize = { w: 300, h: 300 };
  let pending = null;        // an out-of-box click awaiting its answer: {index, x, y}
  let asking = null;         // a move awaiting the unsaved-changes answer: {step, skip}
  let awaiting = null;       // nonce sent, answer not yet drawn
  let awaitingTimer = null;
  let edits = 0;             // local edits made in this iframe, counted
  let editsSent = 0;         // ... of which the last message sent to Python carried
  let press = null;          // the pointer press being tracked
  let spaceDown = false;
  let wl = loadView();
  let statusText = "", statusKind = "";

  function loadView() {
    try {
      const saved = JSON.parse(sessionStorage.getItem("cervicurve.keypoints.view") || "null");
      if (saved && typeof saved.brightness === "number") return saved;
    } catch (e) { /* no storage: defaults */ }
    return null;
  }

  // ------------------------------------------------------------------ helpers on the film

  const N = () => (args ? args.names.unknown.length : 23);
  function imageSize() { return args ? args.image_size : [1, 1]; }
  function fitScale() {
    const [W, H] = imageSize();
    return Math.min(viewSize.w / W, viewSize.h / H);
  }
  function transform() {
    if (!centre) { const [W, H] = imageSize(); centre = [W / 2, H / 2]; }  // a new film: the whole of it
    const s = fitScale() * zoom;
    return { s: s, tx: viewSize.w / 2 - centre[0] * s, ty: viewSize.h / 2 - centre[1] * s };
  }
  function toImage(px, py) { const t = transform(); return [(px - t.tx) / t.s, (py - t.ty) / t.s]; }
  function toView(x, y) { const t = transform(); return [x * t.s + t.tx, y * t.s + t.ty]; }
  function inFilm(x, y) { const [W, H] = imageSize(); return x >= 0 && y >= 0 && x <= W && y <= H; }
  function inBox(x, y) {
    const b = work.box;
    return !b || (x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3]);
  }
  // The side of the film the face is on (null until known): it names the anterior and posterior corners.
  function facing() { return work && work.facing ? work.facing : null; }
  function names() { return args.names[facing() || "unknown"]; }
  function setFacing(side) {
    // names only: nothing stored changes, so this is no edit to save or undo
    work.facing = side;
    keep();
    render();
  }
  function placed(i) { return work.points[i] !== null; }
  function placedCount() { let n = 0; for (let i = 0; i < N(); i++) if (placed(i)) n++; return n; }
  function nextIndex() {
    if (target !== null && target < N()) return target;
    for (let i = 0; i < N(); i++) if (!placed(i) && !work.hidden.has(i)) return i;
    return null;
  }
  function dirty() { return localDirty || (server && server.dirty); }
  function round2(v) { return Math.round(v * 100) / 100; }

  function snapshot() {
    return { box: work.box ? work.box.slice() : null, points: work.points.map((p) => (p ? p.slice() : null)),
             hidden: new Set(work.hidden), cls: work.cls, facing: work.facing };
  }
  function restore(s) {
    work = { box: s.box ? s.box.slice() : null, points: s.points.map((p) => (p ? p.slice() : null)),
             hidden: new Set(s.hidden), cls: s.cls, facing: s.facing };
  }
  function storageKey() { return "cervicurve.keypoints.film." + token; }
  const plain = (s) => ({ box: s.box, points: s.points, hidden: [...s.hidden], cls: s.cls, facing: s.facing });
  function keep() {  // the local copy and its undo steps, for an iframe drawn afresh
    try {
      sessionStorage.setItem(storageKey(), JSON.stringify(Object.assign(plain(snapshot()), {
        edited: localDirty, history: history.slice(-100).map(plain) })));
    } catch (e) { /* storage full or off: the edits still live here */ }
  }
  function edited() {           // after every local edit
    edits++;
    localDirty = true;
    keep();
    render();
  }
  function change(fn) {        // an undoable edit
    history.push(snapshot());
    if (history.length > 500) history.shift();
    fn();
    edited();
  }

  // ------------------------------------------------------------------ render from Python

  window.addEventListener("message", (event) => {
    if (event.source !== window.parent || !event.data || event.data.type !== "streamlit:render") return;
    onRender(event.data.args || {});
  });

  function onRender(next) {
    const first = args === null;
    args = next;
    if (args.ack && awaiting && args.ack === awaiting) {
      awaiting = null;
      clearTimeout(awaitingTimer);
    }
    const state = args.state;
    const newToken = state.image_id + ":" + state.uid + ":" + state.revision;
    const newFilm = !server || server.image_id !== state.image_id;
    server = state;
    const kept = newToken !== token ? adopt(state, newToken, newFilm) : null;
    if (first && args.view && !wl) wl = args.view;
    if (!wl) wl = { brightness: 0, contrast: 0, invert: false };
    showView();
    const notice = [args.notice ? args.notice.text : "", kept || ""].filter(Boolean).join(" ");
    if (notice) setStatus(notice, kept ? "error" : args.notice.kind);
    else if (newFilm) setStatus("", "");
    if (!film || film.key !== args.film_key) loadFilm(args.film, args.film_key);
    buildClasses();
    layout();
  }

  function unsentKey(imageId) { return "cervicurve.keypoints.unsent." + imageId; }

  function adopt(state, newToken, newFilm) {
    // Python's copy changed (another film, a save, a draft): start again from it, unless this iframe was reloaded
    // and kept unsent edits of this very copy. Edits made after the last message sent cannot be in Python's copy
    // (an answer that came after the component stopped waiting, or a rerun from outside the component): they are
    // kept, never replaced. Returns a line for the status, or null.
    const unsent = work && token && edits > editsSent ? plain(snapshot()) : null;
    if (token) {
      try { sessionStorage.removeItem(storageKey()); } catch (e) { /* ignore */ }
    }
    if (unsent && !newFilm) {  // the same film: Python's new copy is older than what is on screen
      token = newToken;
      localDirty = true;
      keep();
      return "The server answered after your later edits: they are kept here, not yet saved.";
    }
    if (unsent) {  // another film came: this film's later edits wait for it to be shown again
      try { sessionStorage.setItem(unsentKey(token.split(":")[0]), JSON.stringify(unsent)); } catch (e) { /* ignore */ }
    }
    token = newToken;
    editsSent = edits;
    const hadBox = !!(work && work.box);
    work = { box: state.box ? state.box.slice() : null, points: state.points.map((p) => (p ? p.slice() : null)),
             hidden: new Set(state.hidden), cls: state.curvature_class || null,
             facing: state.facing || (work && work.facing) || null };
    history = [];
    localDirty = false;
    try {
      const kept = JSON.parse(sessionStorage.getItem(storageKey()) || "null");
      if (kept) {
        restore(kept);
        history = (kept.history || []).map((step) => Object.assign({}, step, { hidden: new Set(step.hidden) }));
        localDirty = !!kept.edited;
        if (localDirty) {
          edits++;  // not in Python's copy
          setStatus("Unsent edits of this film were kept.", "");
        }
      }
    } catch (e) { /* nothing kept */ }
    let message = null;
    try {
      const later = JSON.parse(sessionStorage.getItem(unsentKey(state.image_id)) || "null");
      if (later) {  // edits of this film that a late answer moved away from: back, unsaved and undoable
        sessionStorage.removeItem(unsentKey(state.image_id));
        history.push(snapshot());
        restore(later);
        edits++;  // not in Python's copy
        localDirty = true;
        keep();
        message = "Edits of this film made while the server was slow to answer are back, not yet saved.";
      }
    } catch (e) { /* nothing kept */ }
    target = null;
    pending = null;
    asking = null;
    $("confirm").hidden = true;
    $("question").hidden = true;
    if (newFilm) {
      zoom = 1;
      centre = null;
    }
    if (newFilm || (!hadBox && work.box)) mode = work.box ? "points" : "box";  // e.g. a draft brought the box
    return message;
  }

  // ------------------------------------------------------------------ the film and its window

  function loadFilm(url, key) {
    app.dataset.ready = "0";
    film = null;  // never the last film under this film's points
    draw();
    const picture = new Image();
    picture.onload = () => {
      if (args.film_key !== key) return;  // a newer film was asked for meanwhile
      const source = document.createElement("canvas");
      source.width = picture.naturalWidth;
      source.height = picture.naturalHeight;
      const sctx = source.getContext("2d", { willReadFrequently: true });
      sctx.drawImage(picture, 0, 0);
      const rgba = sctx.getImageData(0, 0, source.width, source.height).data;
      const gray = new Uint8ClampedArray(source.width * source.height);
      for (let i = 0, j = 0; i < gray.length; i++, j += 4) gray[i] = rgba[j];
      const windowed = document.createElement("canvas");
      windowed.width = source.width;
      windowed.height = source.height;
      film = { key: key, width: source.width, height: source.height, gray: gray, windowed: windowed };
      applyWindow();
      app.dataset.ready = "1";
      layout();
    };
    picture.onerror = () => setStatus("The film could not be shown in the browser.", "error");
    picture.src = url;
  }

  // The window over [0, 1] grey levels: width = 1 - 0.95 * contrast / 100, centre = 0.5 - brightness / 200, so
  // brightness up lowers the centre and the film gets brighter (ui/canvas.py ViewSettings.from_sliders says the same).
  function windowLut() {
    const width = Math.max(1 - 0.95 * wl.contrast / 100, 1e-3);
    const low = 0.5 - wl.brightness / 200 - width / 2;
    const lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) {
      let shown = Math.min(1, Math.max(0, (v / 255 - low) / width));
      if (wl.invert) shown = 1 - shown;
      lut[v] = Math.round(shown * 255);
    }
    return lut;
  }
  function applyWindow() {
    if (!film) return;
    const lut = windowLut();
    const wctx = film.windowed.getContext("2d");
    const out = wctx.createImageData(film.width, film.height);
    const data = out.data, gray = film.gray;
    for (let i = 0, j = 0; i < gray.length; i++, j += 4) {
      const v = lut[gray[i]];
      data[j] = v; data[j + 1] = v; data[j + 2] = v; data[j + 3] = 255;
    }
    wctx.putImageData(out, 0, 0);
    draw();
  }
  function showView() {
    $("brightness").value = wl.brightness; $("brightness-value").textContent = wl.brightness;
    $("contrast").value = wl.contrast; $("contrast-value").textContent = wl.contrast;
    $("invert").checked = !!wl.invert;
  }
  function viewChanged() {
    wl = { brightness: Number($("brightness").value), contrast: Number($("contrast").value),
           invert: $("invert").checked };
    $("brightness-value").textContent = wl.brightness;
    $("contrast-value").textContent = wl.contrast;
    try { sessionStorage.setItem("cervicurve.keypoints.view", JSON.stringify(wl)); } catch (e) { /* ignore */ }
    applyWindow();
  }
  $("brightness").addEventListener("input", viewChanged);
  $("contrast").addEventListener("input", viewChanged);
  $("invert").addEventListener("change", viewChanged);
  $("view-reset").addEventListener("click", () => {
    $("brightness").value = 0; $("contrast").value = 0; $("invert").checked = false; viewChanged();
  });

  // ------------------------------------------------------------------ layout and drawing

  function parentHeight() {
    try { return window.parent.innerHeight || 900; } catch (e) { return 900; }
  }
  function layout() {
    if (!args) return;
    const width = Math.max(160, Math.floor(stage.clientWidth));
    const [W, H] = imageSize();
    const tallest = Math.max(320, Math.round(parentHeight() * 0.72));
    const height = Math.max(200, Math.min(tallest, Math.round(width * H / W)));
    if (width !== viewSize.w || height !== viewSize.h || canvas.width !== Math.round(width * devicePixelRatio)) {
      viewSize = { w: width, h: height };
      const dpr = window.devicePixelRatio || 1;
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
      canvas.style.width = width + "px";
      canvas.style.height = height + "px";
    }
    if (!centre) centre = [W / 2, H / 2];
    render();
    sendHeight();
  }

  function render() {
    if (!work) return;
    draw();
    showNext();
    drawDiagram();
    showButtons();
    showStatus();
    const t = transform();
    canvas.dataset.scale = t.s;
    canvas.dataset.tx = t.tx;
    canvas.dataset.ty = t.ty;
    app.dataset.imageId = server.image_id;
    app.dataset.revision = server.revision;
    app.dataset.placed = placedCount();
    // what is on screen, in image pixels (for assistive tools and the browser tests: the same as the drawing)
    app.dataset.box = JSON.stringify(work.box);
    app.dataset.points = JSON.stringify(work.points);
    app.dataset.hidden = work.hidden.size;
    app.dataset.dirty = dirty() ? "1" : "0";
    app.dataset.busy = awaiting ? "1" : "0";
    app.dataset.mode = mode;
    app.classList.toggle("busy", !!awaiting);
    app.classList.toggle("asking", !!pending);  // the click outside the box is answered first
  }

  function draw() {
    if (!work || !args) return;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, viewSize.w, viewSize.h);
    const t = transform();
    const [W, H] = imageSize();
    if (film) {
      ctx.imageSmoothingEnabled = t.s * W / film.width < 6;
      ctx.drawImage(film.windowed, 0, 0, film.width, film.height, t.tx, t.ty, W * t.s, H * t.s);
    }
    // the C2 and C7 inferior endplates (the C2-C7 Cobb lines) once their corners are there
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#ffd600";
    for (const [a, b] of args.endplates) {
      if (placed(a) && placed(b)) {
        const p = toView(...work.points[a]), q = toView(...work.points[b]);
        ctx.beginPath(); ctx.moveTo(p[0], p[1]); ctx.lineTo(q[0], q[1]); ctx.stroke();
      }
    }
    if (work.box) {
      const [x1, y1] = toView(work.box[0], work.box[1]), [x2, y2] = toView(work.box[2], work.box[3]);
      ctx.strokeStyle = args.box_colour;
      ctx.lineWidth = 2;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      if (mode === "box") {
        ctx.fillStyle = args.box_colour;
        for (const [x, y] of [[x1, y1], [x2, y1], [x1, y2], [x2, y2]]) ctx.fillRect(x - 4, y - 4, 8, 8);
      }
    }
    if (press && press.kind === "newbox" && press.moved) {
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = args.box_colour;
      ctx.lineWidth = 2;
      ctx.strokeRect(press.x0, press.y0, press.x - press.x0, press.y - press.y0);
      ctx.setLineDash([]);
    }
    const radius = 5;
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (let i = 0; i < N(); i++) {
      if (!placed(i)) continue;
      const [x, y] = toView(...work.points[i]);
      ctx.beginPath();
      ctx.arc(x, y, radius, 0, 2 * Math.PI);
      ctx.fillStyle = args.colours[i];
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#000";
      ctx.stroke();
      const label = String(i + 1);
      const side = args.sides[i] === "left" ? -1 : 1;  // numbers outside the body
      const lx = side > 0 ? x + radius + 3 : x - radius - 3 - ctx.measureText(label).width;
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(0,0,0,0.85)";
      ctx.strokeText(label, lx, y - 6);
      ctx.fillStyle = args.colours[i];
      ctx.fillText(label, lx, y - 6);
    }
    if (pending) {
      const [x, y] = toView(pending.x, pending.y);
      ctx.setLineDash([3, 3]);
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#fff";
      ctx.beginPath(); ctx.arc(x, y, radius + 3, 0, 2 * Math.PI); ctx.stroke();
      ctx.setLineDash([]);
    }
  }

  function showNext() {
    const box = $("next");
    const index = nextIndex();
    const count = placedCount(), hidden = work.hidden.size;
    const done = count + " of " + N() + " placed" + (hidden ? " · " + hidden + " hidden" : "");
    box.textContent = "";
    if (!facing()) {  // asked once; later films start from the answer (the Face button changes it)
      box.append(text("b", "The face is on which side?"));
      for (const [side, label] of [["left", "◀ Left"], ["right", "Right ▶"]]) {
        const button = text("button", label);
        button.type = "button";
        button.id = "face-" + side;
        button.className = "small";
        button.title = "The patient faces the " + side + " of the film: the corners on that side are anterior";
        button.addEventListener("click", () => setFacing(side));
        box.append(button);
      }
      box.append(text("span", "·", "muted"));
    }
    if (mode === "box") {
      box.append(text("b", work.box ? "Box: drag a corner to adjust, or drag a new box." :
                                  "Drag the C2–C7 box around the spine."));
      box.append(text("span", " Then the points (" + done + ").", "muted"));
      return;
    }
    if (index === null) {
      box.append(text("b", "All " + N() + " points placed or marked hidden."));
      box.append(text("span", " Drag a point to move it · choose the class · save.", "muted"));
      return;
    }
    const chip = text("span", String(index + 1), "chip");
    chip.style.background = args.colours[index];
    box.append(text("span", "Next:"), chip, text("b", names()[index]));
    const where = args.sides[index] ? "image " + args.sides[index] : "";
    box.append(text("span", (where ? "(" + where + ") · " : "") + done, "muted"));
  }
  function text(tag, content, cls) {
    const el = document.createElement(tag);
    el.textContent = content;
    if (cls) el.className = cls;
    return el;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, content) {
    const el = document.createElementNS(SVG, tag);
    for (const k in attrs) el.setAttribute(k, attrs[k]);
    if (content !== undefined) el.textContent = content;
    return el;
  }
  function drawDiagram() {
    // A sketch in image space: point k sits on the same side of the body as on the film; the posterior elements
    // and the face marker show which side is which, so "anterior" needs no guessing.
    const diagram = $("diagram");
    diagram.textContent = "";
    const spots = args.diagram;
    const X = (u) => 14 + u * 122, Y = (v) => 10 + v * 130;
    const known = facing() !== null, anteriorLeft = facing() === "left";
    // posterior elements as a stub beside each body (once the facing is known), the level's name beyond it
    const stubX = anteriorLeft ? X(0.78) + 3 : X(0.22) - 15;
    const labelX = anteriorLeft ? stubX + 14 : stubX - 2;
    const anchor = anteriorLeft ? "start" : "end";
    const body = { fill: "#e6e8ee", stroke: "#9aa0ad" };
    const level = (name, top, bottom) => {
      if (known) diagram.append(svg("rect", Object.assign({ x: stubX, y: top + 2, width: 12,
                                                            height: bottom - top - 4, rx: 3 }, body)));
      diagram.append(svg("text", { x: labelX, y: (top + bottom) / 2 + 4, "text-anchor": anchor, "font-size": 10,
                                   fill: "#6b6f7b" }, name));
    };
    const c2left = spots[1], c2right = spots[2];
    diagram.append(svg("polygon", Object.assign({
      points: [[c2left[0], 0.07], [0.42, 0.0], [0.58, 0.0], [c2right[0], 0.07], c2right, c2left]
        .map(([u, v]) => X(u) + "," + Y(v)).join(" ") }, body)));
    level("C2", Y(0.07), Y(0.3));
    for (let k = 3; k < N(); k += 4) {
      const corners = [spots[k], spots[k + 1], spots[k + 3], spots[k + 2]];
      diagram.append(svg("polygon", Object.assign({ points: corners.map(([u, v]) => X(u) + "," + Y(v)).join(" ") },
                                                  body)));
      level(args.vertebrae[k], Y(spots[k][1]), Y(spots[k + 2][1]));
    }
    if (known) {
      diagram.append(svg("text", { x: anteriorLeft ? 2 : 148, y: 256, "text-anchor": anteriorLeft ? "start" : "end",
                                   "font-size": 10, fill: "#1f6f8b" }, anteriorLeft ? "◀ face (anterior)" :
                                   "(anterior) face ▶"));
    }
    const current = nextIndex();
    for (let i = 0; i < N(); i++) {
      const [u, v] = spots[i];
      const g = svg("g", { "data-index": i, style: "cursor:pointer" });
      g.append(svg("title", {}, (i + 1) + ": " + names()[i] + (work.hidden.has(i) ? " (hidden)" : "") +
                                " — click to place or move this point next"));
      if (i === current) g.append(svg("circle", { cx: X(u), cy: Y(v), r: 10.5, fill: "none", stroke: "#111",
                                                  "stroke-width": 2 }));
      g.append(svg("circle", { cx: X(u), cy: Y(v), r: 7.5, fill: placed(i) ? args.colours[i] : "#fff",
                               stroke: work.hidden.has(i) ? "#9aa0ad" : args.colours[i], "stroke-width": 2,
                               "stroke-dasharray": work.hidden.has(i) ? "2 2" : "none" }));
      g.append(svg("text", { x: X(u), y: Y(v) + 3.5, "text-anchor": "middle", "font-size": 9, "font-weight": 700,
                             fill: "#111" }, String(i + 1)));
      g.addEventListener("click", () => {
        target = target === i ? null : i;
        mode = "points";
        render();
      });
      diagram.append(g);
    }
    $("facing-note").textContent = known ? "· face " + facing() : "· face ?";
  }

  function showButtons() {
    $("mode-box").setAttribute("aria-pressed", mode === "box");
    $("mode-points").setAttribute("aria-pressed", mode === "points");
    $("undo").disabled = history.length === 0;
    $("reset").disabled = placedCount() === 0 && work.hidden.size === 0;
    $("hide").disabled = nextIndex() === null;
    $("zoom-box").disabled = !work.box;
    $("facing").textContent = { left: "Face ◀", right: "Face ▶" }[facing()] || "Face ?";
    $("previous").disabled = !args.nav.can_previous;
    $("next-film").disabled = !args.nav.can_next;
    $("skip").disabled = !args.nav.can_skip;
    $("save-next").textContent = args.nav.can_next ? "Save & next ▶" : "Save";
    for (const button of document.querySelectorAll("#classes button")) {
      button.setAttribute("aria-pressed", button.dataset.cls === work.cls);
    }
  }

  function buildClasses() {
    const bar = $("classes");
    const wanted = args.classes.map((c) => c + (c === args.suggested ? "*" : "")).join(",");
    if (bar.dataset.built === wanted) return;
    bar.dataset.built = wanted;
    for (const old of bar.querySelectorAll("button")) old.remove();
    args.classes.forEach((name, k) => {
      const suggested = name === args.suggested;
      const button = text("button", (suggested ? "★ " : "") + name.charAt(0).toUpperCase() + name.slice(1));
      button.type = "button";
      button.dataset.cls = name;
      button.id = "class-" + name;
      button.title = "Curvature class (" + (k + 1) + ")" +
        (suggested ? ": suggested by the angle measured from the saved points" : "");
      button.addEventListener("click", () => chooseClass(name));
      bar.append(button);
    });
  }
  function chooseClass(name) {
    if (work.cls === name) return;
    change(() => { work.cls = name; });
  }

  function setStatus(message, kind) { statusText = message || ""; statusKind = kind || ""; showStatus(); }
  function showStatus() {
    const status = $("status");
    let message = statusText;
    if (awaiting) message = "Working…";
    else if (!message && dirty()) message = "Unsaved changes on this film.";
    status.textContent = message;
    status.className = "status" + (statusKind && !awaiting ? " " + statusKind : "");
  }
  function flashHint(message) {
    const hint = $("hint");
    hint.textContent = message;
    hint.hidden = false;
    clearTimeout(flashHint.timer);
    flashHint.timer = setTimeout(() => { hint.hidden = true; }, 2500);
  }

  // ------------------------------------------------------------------ editing

  function placePoint(x, y) {
    const index = nextIndex();
    if (index === null) {
      flashHint("All points are placed: drag one to move it, or Undo.");
      return;
    }
    if (!inFilm(x, y)) {
      flashHint("That click is off the film.");
      return;
    }
    if (!inBox(x, y)) {
      pending = { index: index, x: x, y: y };
      askOutside();
      draw();
      return;
    }
    commitPoint(index, x, y);
  }
  function commitPoint(index, x, y) {
    change(() => {
      work.points[index] = [round2(x), round2(y)];
      work.hidden.delete(index);
      target = null;
    });
  }
  function askOutside() {
    const [vx, vy] = toView(pending.x, pending.y);
    $("confirm-text").textContent = "Outside the C2–C7 box. Keep it as " + (pending.index + 1) + " · " +
      names()[pending.index] + "?";
    const dialog = $("confirm");
    dialog.hidden = false;
    const w = dialog.offsetWidth, h = dialog.offsetHeight;
    dialog.style.left = Math.max(4, Math.min(viewSize.w - w - 4, vx + 12)) + "px";
    dialog.style.top = Math.max(4, Math.min(viewSize.h - h - 4, vy + 12)) + "px";
    $("confirm-keep").focus();
  }
  function answerOutside(keepIt) {
    const was = pending;
    pending = null;
    $("confirm").hidden = true;
    canvas.focus();
    if (keepIt && was) commitPoint(was.index, was.x, was.y);
    else render();
  }
  $("confirm-keep").addEventListener("click", () => answerOutside(true));
  $("confirm-cancel").addEventListener("click", () => answerOutside(false));

  function hideNext() {
    const index = nextIndex();
    if (index === null) return;
    change(() => {
      work.points[index] = null;
      work.hidden.add(index);
      target = null;
    });
  }
  function undo() {
    if (!history.length) return;
    restore(history.pop());
    target = null;
    edited();
  }
  function resetPoints() {
    if (placedCount() === 0 && work.hidden.size === 0) return;
    change(() => {
      work.points = work.points.map(() => null);
      work.hidden = new Set();
      target = null;
    });
    mode = work.box ? "points" : "box";
    render();
  }
  function setMode(next) { mode = next; render(); }

  // ------------------------------------------------------------------ zoom and pan

  function zoomAt(px, py, factor) {
    const [ix, iy] = toImage(px, py);
    zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, zoom * factor));
    const s = fitScale() * zoom;
    centre = [ix - (px - viewSize.w / 2) / s, iy - (py - viewSize.h / 2) / s];
    clampCentre();
    render();
  }
  function clampCentre() {
    const [W, H] = imageSize();
    centre = [Math.min(W, Math.max(0, centre[0])), Math.min(H, Math.max(0, centre[1]))];
  }
  function fit() { const [W, H] = imageSize(); zoom = 1; centre = [W / 2, H / 2]; render(); }
  function zoomToBox() {
    // The whole box when it has about the view's shape. A tall C2-C7 box in a wide view would hardly zoom that way
    // (its height already fills the view), so then its width fills the view, its top (C2) shown first: the film
    // moves down with a drag, the arrow keys or Page Down.
    if (!work.box) return;
    const [x1, y1, x2, y2] = work.box;
    const margin = 0.06;
    const bw = (x2 - x1) * (1 + 2 * margin), bh = (y2 - y1) * (1 + 2 * margin);
    const whole = Math.min(viewSize.w / bw, viewSize.h / bh), across = viewSize.w / bw;
    const s = across > 1.25 * whole ? Math.min(across, 3 * whole) : whole;
    zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, s / fitScale()));
    const shown = fitScale() * zoom;
    const top = y1 - (y2 - y1) * margin;
    centre = [(x1 + x2) / 2, s === whole ? (y1 + y2) / 2 : top + viewSize.h / shown / 2];
    clampCentre();
    render();
  }
  function pan(dx, dy) {  // by a share of the view
    const s = fitScale() * zoom;
    centre = [centre[0] + dx * viewSize.w / s, centre[1] + dy * viewSize.h / s];
    clampCentre();
    render();
  }

  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const r = canvas.getBoundingClientRect();
    zoomAt(event.clientX - r.left, event.clientY - r.top, Math.exp(-event.deltaY * 0.0015));
  }, { passive: false });
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());

  // ------------------------------------------------------------------ pointer: click, drag, pan

  function nearestPoint(px, py) {
    let best = null, bestDistance = HIT_PX;
    for (let i = 0; i < N(); i++) {
      if (!placed(i)) continue;
      const [x, y] = toView(...work.points[i]);
      const d = Math.hypot(x - px, y - py);
      if (d <= bestDistance) { best = i; bestDistance = d; }
    }
    return best;
  }
  function nearestCorner(px, py) {
    if (!work.box) return null;
    const [x1, y1] = toView(work.box[0], work.box[1]), [x2, y2] = toView(work.box[2], work.box[3]);
    const corners = [[x1, y1, 0, 1], [x2, y1, 2, 1], [x1, y2, 0, 3], [x2, y2, 2, 3]];
    let best = null, bestDistance = HIT_PX;
    for (const [x, y, ix, iy] of corners) {
      const d = Math.hypot(x - px, y - py);
      if (d <= bestDistance) { best = [ix, iy]; bestDistance = d; }
    }
    return best;
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (!work || !film || awaiting || pending) return;
    canvas.focus();
    const r = canvas.getBoundingClientRect();
    const px = event.clientX - r.left, py = event.clientY - r.top;
    let kind;
    if (event.button === 1 || event.button === 2 || spaceDown || event.shiftKey) kind = "pan";
    else if (event.button !== 0) return;
    else if (mode === "points") kind = nearestPoint(px, py) !== null ? "point" : "click";
    else kind = nearestCorner(px, py) ? "corner" : "newbox";
    press = { kind: kind, x0: px, y0: py, x: px, y: py, moved: false, point: nearestPoint(px, py),
              corner: nearestCorner(px, py), before: snapshot() };
    canvas.setPointerCapture(event.pointerId);
    event.preventDefault();
  });

  canvas.addEventListener("pointermove", (event) => {
    const r = canvas.getBoundingClientRect();
    const px = event.clientX - r.left, py = event.clientY - r.top;
    if (!press) {
      if (work && mode === "points") canvas.classList.toggle("grab", nearestPoint(px, py) !== null);
      return;
    }
    if (!press.moved && Math.hypot(px - press.x0, py - press.y0) < DRAG_PX) return;
    const dx = px - press.x, dy = py - press.y;  // since the last move (since the press, for the first)
    press.x = px; press.y = py;
    press.moved = true;
    if (press.kind === "pan" || press.kind === "click") {
      canvas.classList.add("panning");
      const s = fitScale() * zoom;
      centre = [centre[0] - dx / s, centre[1] - dy / s];
      clampCentre();
      render();
    } else if (press.kind === "point") {
      const [x, y] = toImage(px, py);
      const [W, H] = imageSize();
      work.points[press.point] = [round2(Math.min(W, Math.max(0, x))), round2(Math.min(H, Math.max(0, y)))];
      draw();
    } else if (press.kind === "corner") {
      const [x, y] = toImage(px, py);
      const [W, H] = imageSize();
      work.box[press.corner[0]] = Math.min(W, Math.max(0, x));
      work.box[press.corner[1]] = Math.min(H, Math.max(0, y));
      draw();
    } else if (press.kind === "newbox") {
      draw();
    }
  });

  function endPress(event, cancelled) {
    if (!press) return;
    const p = press;
    press = null;
    canvas.classList.remove("panning");
    try { canvas.releasePointerCapture(event.pointerId); } catch (e) { /* already released */ }
    if (cancelled) { restore(p.before); render(); return; }
    if (!p.moved) {
      if (p.kind === "click" || p.kind === "point") {
        const [x, y] = toImage(p.x0, p.y0);
        placePoint(x, y);
      }
      return;
    }
    if (p.kind === "point") {
      history.push(p.before);
      edited();
    } else if (p.kind === "corner") {
      const b = work.box;
      work.box = [Math.min(b[0], b[2]), Math.min(b[1], b[3]), Math.max(b[0], b[2]), Math.max(b[1], b[3])]
        .map(round2);
      history.push(p.before);
      edited();
    } else if (p.kind === "newbox") {
      if (Math.abs(p.x - p.x0) < MIN_BOX_PX || Math.abs(p.y - p.y0) < MIN_BOX_PX) { draw(); return; }
      const [W, H] = imageSize();
      const a = toImage(p.x0, p.y0), b = toImage(p.x, p.y);
      const clip = (v, top) => round2(Math.min(top, Math.max(0, v)));
      change(() => {
        work.box = [clip(Math.min(a[0], b[0]), W), clip(Math.min(a[1], b[1]), H),
                    clip(Math.max(a[0], b[0]), W), clip(Math.max(a[1], b[1]), H)];
      });
      if (nextIndex() !== null) setMode("points");
    }
  }
  canvas.addEventListener("pointerup", (event) => endPress(event, false));
  canvas.addEventListener("pointercancel", (event) => endPress(event, true));

  // ------------------------------------------------------------------ talking to Python

  function send(action, extra) {
    if (awaiting) return;
    const s = snapshot();
    const nonce = Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);
    const message = Object.assign({
      nonce: nonce, action: action, image_id: server.image_id,
      edit: { box: s.box, points: s.points, hidden: [...s.hidden].sort((a, b) => a - b), curvature_class: s.cls,
              facing: s.facing },
      step: 0, skip: false, save: false, discard: false, view: wl,
    }, extra || {});
    awaiting = nonce;
    editsSent = edits;
    clearTimeout(awaitingTimer);
    awaitingTimer = setTimeout(() => {
      if (awaiting === nonce) {
        awaiting = null;
        setStatus("No answer from the server yet: your edits are kept here; try again.", "error");
        render();
      }
    }, args.answer_wait_ms);
    render();
    setValue(message);
  }
  function save() { send("save"); }
  function saveNext() {
    if (args.nav.can_next) send("move", { step: 1, save: true });
    else send("save");
  }
  function go(step, skip) {
    if (dirty()) {
      asking = { step: step, skip: !!skip };
      $("question-text").textContent = "This film has unsaved changes. Save them before going on?";
      $("question").hidden = false;
      $("question-save").focus();
      sendHeight();
      return;
    }
    send("move", { step: step, skip: !!skip });
  }
  function answer(choice) {
    const was = asking;
    asking = null;
    $("question").hidden = true;
    sendHeight();
    if (!was || choice === "stay") { canvas.focus(); return; }
    send("move", { step: was.step, skip: was.skip, save: choice === "save", discard: choice === "discard" });
  }
  $("question-save").addEventListener("click", () => answer("save"));
  $("question-discard").addEventListener("click", () => answer("discard"));
  $("question-stay").addEventListener("click", () => answer("stay"));

  $("save").addEventListener("click", save);
  $("save-next").addEventListener("click", saveNext);
  $("previous").addEventListener("click", () => go(-1, false));
  $("next-film").addEventListener("click", () => go(1, false));
  $("skip").addEventListener("click", () => go(1, true));
  $("draft").addEventListener("click", () => send("draft"));
  $("mode-box").addEventListener("click", () => setMode("box"));
  $("mode-points").addEventListener("click", () => setMode("points"));
  $("undo").addEventListener("click", undo);
  $("reset").addEventListener("click", resetPoints);
  $("hide").addEventListener("click", hideNext);
  $("zoom-in").addEventListener("click", () => zoomAt(viewSize.w / 2, viewSize.h / 2, 1.5));
  $("zoom-out").addEventListener("click", () => zoomAt(viewSize.w / 2, viewSize.h / 2, 1 / 1.5));
  $("zoom-fit").addEventListener("click", fit);
  $("zoom-box").addEventListener("click", zoomToBox);
  $("facing").addEventListener("click", () => setFacing(facing() === "left" ? "right" : "left"));

  // ------------------------------------------------------------------ keys (while the component has the focus)

  document.addEventListener("keydown", (event) => {
    if (!work || event.target.tagName === "INPUT") return;
    if (event.key === " ") { spaceDown = true; event.preventDefault(); return; }
    if (pending) {
      if (event.key === "Enter") { answerOutside(true); event.preventDefault(); }
      if (event.key === "Escape") { answerOutside(false); event.preventDefault(); }
      return;
    }
    if (asking) {
      if (event.key === "Escape") { answer("stay"); event.preventDefault(); }
      return;
    }
    if (awaiting || event.altKey || event.metaKey) return;
    const key = event.key.toLowerCase();
    if ((key === "z" && !event.shiftKey)) undo();
    else if (event.ctrlKey) return;
    else if (key === "h") hideNext();
    else if (key === "b") setMode("box");
    else if (key === "p") setMode("points");
    else if (key === "+" || key === "=") zoomAt(viewSize.w / 2, viewSize.h / 2, 1.5);
    else if (key === "-") zoomAt(viewSize.w / 2, viewSize.h / 2, 1 / 1.5);
    else if (key === "0") fit();
    else if (key === "x") zoomToBox();
    else if (key === "f") $("facing").click();
    else if (key === "s") save();
    else if (key === "arrowdown" || key === "pagedown") pan(0, key === "pagedown" ? 0.8 : 0.25);
    else if (key === "arrowup" || key === "pageup") pan(0, key === "pageup" ? -0.8 : -0.25);
    else if (key === "arrowleft") pan(-0.25, 0);
    else if (key === "arrowright") pan(0.25, 0);
    else if (key === "enter" && event.target.tagName !== "BUTTON") saveNext();
    else if (/^[1-9]$/.test(key) && Number(key) <= args.classes.length) chooseClass(args.classes[Number(key) - 1]);
    else return;
    event.preventDefault();
  });
  document.addEventListener("keyup", (event) => { if (event.key === " ") spaceDown = false; });

  // ------------------------------------------------------------------ start

  new ResizeObserver(() => layout()).observe(stage);
  new ResizeObserver(() => sendHeight()).observe(app);
  window.addEventListener("resize", () => layout());
  post("streamlit:componentReady", { apiVersion: 1 });
})();
