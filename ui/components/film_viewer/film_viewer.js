/* CerviCurve film viewer: the Predict page's reading view of one film.
 *
 * A Streamlit custom component (components.v1, declared with path= in ui/film_viewer.py) written against the
 * component protocol directly, as ui/components/keypoints does: the iframe posts {isStreamlitMessage, type}
 * messages to window.parent ("streamlit:componentReady", "streamlit:setFrameHeight") and receives
 * "streamlit:render" with the arguments. No build step, no library, nothing fetched. It never answers Python:
 * zoom, pan, window/level and the layers are the reader's view only.
 *
 * Arguments (ui/film_viewer.py viewer_args): film (grey JPEG data URL at display size), film_key, size [w, h],
 * box [x1, y1, x2, y2] or null, box_label, landmarks (23 [x, y] or null each) or null, endplates
 * [{level, start, end}] or null, heatmap (RGBA PNG data URL) or null, heatmap_alpha, heatmap_label, colours.
 * A layer Python did not send (the verdict withholds it) cannot be turned on here.
 * With no film (film null, note: what to do) it shows only the note: the Predict page draws it empty before any
 * upload, so the browser has made this iframe by the time a result comes, and a result is one render message.
 */
(function () {
  "use strict";

  // ------------------------------------------------------------------ protocol

  function post(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
  }
  let lastHeight = -1;
  function sendHeight() {
    const height = Math.ceil(app.getBoundingClientRect().height) + 4;
    if (height !== lastHeight) {
      lastHeight = height;
      post("streamlit:setFrameHeight", { height: height });
    }
  }

  // ------------------------------------------------------------------ elements and state

  const $ = (id) => document.getElementById(id);
  const app = $("app"), canvas = $("view"), stage = $("stage");
  const ctx = canvas.getContext("2d");
  const ZOOM_MIN = 0.5, ZOOM_MAX = 40, STEP = 1.5;
  const LAYERS = ["box", "landmarks", "endplates", "heatmap"];

  let args = null;
  let film = null;           // {key, width, height, gray, windowed: canvas}
  let heat = null;           // {url, image}
  let zoom = 1, centre = null;  // zoom relative to fit; the film point at the middle of the view
  let viewSize = { w: 300, h: 300 };
  let press = null;
  let wl = { brightness: 0, contrast: 0, invert: false };
  const shown = { box: true, landmarks: true, endplates: true, heatmap: true };
  try {
    const saved = JSON.parse(sessionStorage.getItem("cervicurve.film_viewer.view") || "null");
    if (saved && typeof saved.brightness === "number") wl = saved;
    const layers = JSON.parse(sessionStorage.getItem("cervicurve.film_viewer.layers") || "null");
    if (layers) for (const name of LAYERS) if (typeof layers[name] === "boolean") shown[name] = layers[name];
  } catch (e) { /* no storage: defaults */ }

  function size() { return args ? args.size : [1, 1]; }
  function fitScale() { const [W, H] = size(); return Math.min(viewSize.w / W, viewSize.h / H); }
  function transform() {
    if (!centre) { const [W, H] = size(); centre = [W / 2, H / 2]; }
    const s = fitScale() * zoom;
    return { s: s, tx: viewSize.w / 2 - centre[0] * s, ty: viewSize.h / 2 - centre[1] * s };
  }
  function toView(x, y) { const t = transform(); return [x * t.s + t.tx, y * t.s + t.ty]; }
  function toImage(px, py) { const t = transform(); return [(px - t.tx) / t.s, (py - t.ty) / t.s]; }
  function has(layer) {
    if (!args) return false;
    if (layer === "box") return !!args.box;
    if (layer === "landmarks") return !!(args.landmarks && args.landmarks.some((p) => p));
    if (layer === "endplates") return !!(args.endplates && args.endplates.length);
    return !!args.heatmap;
  }
  function visible(layer) { return has(layer) && shown[layer]; }

  // ------------------------------------------------------------------ render from Python

  window.addEventListener("message", (event) => {
    if (event.source !== window.parent || !event.data || event.data.type !== "streamlit:render") return;
    onRender(event.data.args || {});
  });

  function onRender(next) {
    app.dataset.renders = Number(app.dataset.renders || 0) + 1;
    if (!next.film) { showEmpty(next.note || ""); return; }
    app.classList.remove("empty");
    const newFilm = !args || args.film_key !== next.film_key;
    args = next;
    if (newFilm) { zoom = 1; centre = null; loadFilm(args.film, args.film_key); }
    if (args.heatmap && (!heat || heat.url !== args.heatmap)) loadHeat(args.heatmap);
    if (!args.heatmap) heat = null;
    showLayers();
    showView();
    layout();
  }

  function showEmpty(note) {
    args = null; film = null; heat = null;
    app.dataset.ready = "0";
    delete app.dataset.film;
    $("empty").textContent = note;
    app.classList.add("empty");
    sendHeight();
  }

  function loadFilm(url, key) {
    app.dataset.ready = "0";
    film = null;
    const picture = new Image();
    picture.onload = () => {
      if (!args || args.film_key !== key) return;  // a newer film was asked for meanwhile
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
      app.dataset.film = key;
      app.dataset.ready = "1";
      layout();
    };
    picture.src = url;
  }

  function loadHeat(url) {
    const picture = new Image();
    heat = { url: url, image: null };
    picture.onload = () => { if (heat && heat.url === url) { heat.image = picture; draw(); } };
    picture.src = url;
  }

  // ------------------------------------------------------------------ window / level

  // The window over [0, 1] grey levels, as the Label page's viewer has it: width = 1 - 0.95 * contrast / 100,
  // centre = 0.5 - brightness / 200, so brightness up lowers the centre and the film gets brighter.
  function windowLut() {
    const width = Math.max(1 - 0.95 * wl.contrast / 100, 1e-3);
    const low = 0.5 - wl.brightness / 200 - width / 2;
    const lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) {
      let value = Math.min(1, Math.max(0, (v / 255 - low) / width));
      if (wl.invert) value = 1 - value;
      lut[v] = Math.round(value * 255);
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
    try { sessionStorage.setItem("cervicurve.film_viewer.view", JSON.stringify(wl)); } catch (e) { /* ignore */ }
    applyWindow();
  }
  $("brightness").addEventListener("input", viewChanged);
  $("contrast").addEventListener("input", viewChanged);
  $("invert").addEventListener("change", viewChanged);
  $("view-reset").addEventListener("click", () => {
    $("brightness").value = 0; $("contrast").value = 0; $("invert").checked = false; viewChanged();
  });

  // ------------------------------------------------------------------ layers

  function showLayers() {
    const missing = [];
    for (const name of LAYERS) {
      const box = $("layer-" + name), label = box.closest("label");
      const available = has(name);
      box.disabled = !available;
      box.checked = available && shown[name];
      label.classList.toggle("off", !available);
      label.title = available ? "Show or hide this layer" : "Not shown for this film (the result does not rest on it)";
      if (!available) missing.push(name);
    }
    $("layers-note").textContent = missing.length ? "Not for this film: " + missing.join(", ") : "";
    if (args && args.heatmap && args.heatmap_label) $("layer-heatmap").closest("label").title = args.heatmap_label;
    if (args && args.colours) {
      $("swatch-box").style.background = args.colours.box;
      $("swatch-landmarks").style.background = args.colours.landmarks;
      $("swatch-endplates").style.background = args.colours.endplates;
    }
  }
  for (const name of LAYERS) {
    $("layer-" + name).addEventListener("change", (event) => {
      shown[name] = event.target.checked;
      try { sessionStorage.setItem("cervicurve.film_viewer.layers", JSON.stringify(shown)); } catch (e) { /* ignore */ }
      draw();
    });
  }

  // ------------------------------------------------------------------ layout and drawing

  function parentHeight() {
    try { return window.parent.innerHeight || 900; } catch (e) { return 900; }
  }
  function layout() {
    if (!args) return;
    const width = Math.max(160, Math.floor(stage.clientWidth));
    const [W, H] = size();
    const tallest = Math.max(320, Math.round(parentHeight() * 0.8));
    const height = Math.max(200, Math.min(tallest, Math.round(width * H / W)));
    const dpr = window.devicePixelRatio || 1;
    if (width !== viewSize.w || height !== viewSize.h || canvas.width !== Math.round(width * dpr)) {
      viewSize = { w: width, h: height };
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
      canvas.style.width = width + "px";
      canvas.style.height = height + "px";
    }
    draw();
    sendHeight();
  }

  function draw() {
    if (!args) return;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, viewSize.w, viewSize.h);
    const t = transform();
    const [W, H] = size();
    const drawn = [];
    if (film) {
      ctx.imageSmoothingEnabled = t.s < 4;
      ctx.drawImage(film.windowed, 0, 0, film.width, film.height, t.tx, t.ty, W * t.s, H * t.s);
      drawn.push("film");
    }
    if (visible("heatmap") && heat && heat.image) {
      ctx.globalAlpha = Math.min(1, Math.max(0, Number(args.heatmap_alpha)));
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(heat.image, t.tx, t.ty, W * t.s, H * t.s);
      ctx.globalAlpha = 1;
      drawn.push("heatmap");
    }
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.textBaseline = "bottom";
    if (visible("box")) {
      const [x1, y1] = toView(args.box[0], args.box[1]), [x2, y2] = toView(args.box[2], args.box[3]);
      ctx.strokeStyle = args.colours.box;
      ctx.lineWidth = 2;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      if (args.box_label) label(args.box_label, x1 + 3, Math.max(14, y1 - 3), args.colours.box);
      drawn.push("box");
    }
    if (visible("endplates")) {
      ctx.strokeStyle = args.colours.endplates;
      ctx.lineWidth = 2;
      for (const line of args.endplates) {
        const p = toView(...line.start), q = toView(...line.end);
        ctx.beginPath(); ctx.moveTo(p[0], p[1]); ctx.lineTo(q[0], q[1]); ctx.stroke();
        label(line.level, q[0] + 4, q[1] + 6, args.colours.endplates);
      }
      drawn.push("endplates");
    }
    if (visible("landmarks")) {
      const radius = Math.max(2.5, Math.min(6, 2 + t.s));
      ctx.fillStyle = args.colours.landmarks;
      for (const p of args.landmarks) {
        if (!p) continue;
        const [x, y] = toView(p[0], p[1]);
        ctx.beginPath(); ctx.arc(x, y, radius, 0, 2 * Math.PI); ctx.fill();
      }
      drawn.push("landmarks");
    }
    canvas.dataset.scale = t.s;
    canvas.dataset.zoom = zoom;
    canvas.dataset.tx = t.tx;
    canvas.dataset.ty = t.ty;
    canvas.dataset.layers = drawn.join(",");
    $("zoom-value").textContent = Math.round(zoom * 100) + " %";
  }
  function label(text, x, y, colour) {
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(0,0,0,0.85)";
    ctx.strokeText(text, x, y);
    ctx.fillStyle = colour;
    ctx.fillText(text, x, y);
  }

  // ------------------------------------------------------------------ zoom and pan

  function zoomAt(px, py, factor) {
    const [x, y] = toImage(px, py);
    const next = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, zoom * factor));
    if (next === zoom) return;
    zoom = next;
    const s = fitScale() * zoom;  // keep the film point under the pointer where it is
    centre = [x - (px - viewSize.w / 2) / s, y - (py - viewSize.h / 2) / s];
    draw();
  }
  function fit() { zoom = 1; centre = null; draw(); }
  function pan(dx, dy) {  // view pixels
    const s = transform().s;
    centre = [centre[0] - dx / s, centre[1] - dy / s];
    draw();
  }
  $("zoom-in").addEventListener("click", () => zoomAt(viewSize.w / 2, viewSize.h / 2, STEP));
  $("zoom-out").addEventListener("click", () => zoomAt(viewSize.w / 2, viewSize.h / 2, 1 / STEP));
  $("zoom-fit").addEventListener("click", fit);
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const r = canvas.getBoundingClientRect();
    zoomAt(event.clientX - r.left, event.clientY - r.top, Math.exp(-event.deltaY * 0.0015));
  }, { passive: false });
  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    press = { x: event.clientX, y: event.clientY };
    canvas.setPointerCapture(event.pointerId);
    canvas.classList.add("panning");
    canvas.focus();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!press) return;
    pan(event.clientX - press.x, event.clientY - press.y);
    press = { x: event.clientX, y: event.clientY };
  });
  function endPress(event) {
    press = null;
    canvas.classList.remove("panning");
    try { canvas.releasePointerCapture(event.pointerId); } catch (e) { /* already released */ }
  }
  canvas.addEventListener("pointerup", endPress);
  canvas.addEventListener("pointercancel", endPress);
  canvas.addEventListener("dblclick", fit);
  canvas.addEventListener("keydown", (event) => {
    const key = event.key;
    if (key === "+" || key === "=") zoomAt(viewSize.w / 2, viewSize.h / 2, STEP);
    else if (key === "-") zoomAt(viewSize.w / 2, viewSize.h / 2, 1 / STEP);
    else if (key === "0") fit();
    else if (key === "ArrowLeft") pan(viewSize.w * 0.2, 0);
    else if (key === "ArrowRight") pan(-viewSize.w * 0.2, 0);
    else if (key === "ArrowUp") pan(0, viewSize.h * 0.2);
    else if (key === "ArrowDown") pan(0, -viewSize.h * 0.2);
    else return;
    event.preventDefault();
  });

  // ------------------------------------------------------------------ start

  new ResizeObserver(() => layout()).observe(stage);
  new ResizeObserver(() => sendHeight()).observe(app);
  window.addEventListener("resize", () => layout());
  post("streamlit:componentReady", { apiVersion: 1 });
})();
