// SoundFoundry web UI. Plain JS, no build step, loaded with `defer` from every page.
// The pages are static shells; this script talks to the JSON API with the user's token.
"use strict";

(function () {
  var TOKEN_KEY = "sf.token";
  var MANUAL_KEY = "sf.token.manual"; // set when the user pasted a token themselves
  var CREDITS_PER_30S = 5; // core/pricing.py
  var VOCALS_MULTIPLIER = 2;

  var page = document.body.dataset.page;
  var account = null;

  // ------------------------------------------------------------------ helpers

  function $(id) {
    return document.getElementById(id);
  }

  function show(el, visible) {
    if (el) el.hidden = !visible;
  }

  function setText(el, text) {
    if (el) el.textContent = text;
  }

  function token() {
    try {
      return window.localStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  function storeToken(value, manual) {
    window.localStorage.setItem(TOKEN_KEY, value);
    if (manual) window.localStorage.setItem(MANUAL_KEY, "1");
    else window.localStorage.removeItem(MANUAL_KEY);
  }

  function clearToken() {
    window.localStorage.removeItem(TOKEN_KEY);
    window.localStorage.removeItem(MANUAL_KEY);
  }

  // DEV_AUTOLOGIN: the server put the dev user's token in a meta tag (loopback only).
  function devToken() {
    var meta = document.querySelector('meta[name="sf-dev-token"]');
    return meta ? meta.getAttribute("content") : null;
  }

  function adoptDevToken() {
    var dev = devToken();
    if (!dev) return;
    if (window.localStorage.getItem(MANUAL_KEY) === "1" && token()) return;
    if (token() !== dev) storeToken(dev, false);
  }

  function creditsFor(duration, vocals) {
    var base = Math.ceil((duration * CREDITS_PER_30S) / 30);
    return vocals ? base * VOCALS_MULTIPLIER : base;
  }

  function safeNext(value) {
    // Only same-site paths: "/tracks", never "//evil.example" or "https://…".
    if (!value || value.charAt(0) !== "/" || value.charAt(1) === "/" || value.charAt(1) === "\\") {
      return "/create";
    }
    return value;
  }

  function goSignIn() {
    var here = window.location.pathname + window.location.search;
    window.location.assign("/signin?next=" + encodeURIComponent(here));
  }

  function formatDuration(seconds) {
    if (seconds == null || isNaN(seconds)) return "–";
    var s = Math.round(seconds);
    var m = Math.floor(s / 60);
    var r = s % 60;
    return m + ":" + (r < 10 ? "0" : "") + r;
  }

  function formatTime(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return "";
    return d.toLocaleTimeString([], {
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      hour12: false,
    });
  }

  function formatDate(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return "";
    return d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }

  var FIELD_LABELS = {
    prompt: "Prompt",
    duration_s: "Duration",
    has_vocals: "Vocals",
    style_strength: "Style strength",
    lyrics: "Lyrics",
  };

  // The API's reason, readable: a string detail as it is, a 422 list as "Field: why".
  function describe(res) {
    var detail = res.data && res.data.detail;
    var reason;
    if (Array.isArray(detail)) {
      reason = detail
        .map(function (item) {
          var loc = (item.loc || []).filter(function (part) {
            return part !== "body";
          });
          var field = loc.length ? String(loc[loc.length - 1]) : "";
          var label = FIELD_LABELS[field] || field;
          return (label ? label + ": " : "") + item.msg;
        })
        .join(" · ");
    } else if (typeof detail === "string") {
      reason = detail;
    } else if (detail && typeof detail === "object") {
      reason = detail.message || JSON.stringify(detail);
    }
    if (res.status === 0) return "Could not reach the server. Check your connection and retry.";
    if (res.status === 402) return "Not enough credits: " + (reason || "top up and retry.");
    if (res.status === 429) {
      var wait = res.retryAfter ? " Try again in " + res.retryAfter + " s." : " Try again shortly.";
      return "Too many requests." + wait + (reason ? " (" + reason + ")" : "");
    }
    if (res.status === 403) return reason || "This is over your plan's limits.";
    if (res.status >= 500) return reason || "The server had a problem (" + res.status + ").";
    return reason || "Request failed (" + res.status + ").";
  }

  function errorFields(res) {
    var detail = res.data && res.data.detail;
    if (!Array.isArray(detail)) return [];
    return detail.map(function (item) {
      var loc = item.loc || [];
      return String(loc[loc.length - 1]);
    });
  }

  // fetch + JSON with the bearer token. Never throws: {ok, status, data, retryAfter}.
  function api(path, options) {
    options = options || {};
    var headers = { Accept: "application/json" };
    var t = token();
    if (t) headers.Authorization = "Bearer " + t;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {
      method: options.method || "GET",
      headers: headers,
      body: options.body !== undefined ? JSON.stringify(options.body) : undefined,
      cache: "no-store",
    })
      .then(function (response) {
        return response.text().then(function (text) {
          var data = null;
          try {
            data = text ? JSON.parse(text) : null;
          } catch (e) {
            data = { detail: text.slice(0, 300) };
          }
          var retry = response.headers.get("Retry-After");
          var out = {
            ok: response.ok,
            status: response.status,
            data: data,
            retryAfter: retry ? parseInt(retry, 10) || retry : null,
          };
          if (response.status === 401 && options.auth !== false) {
            clearToken();
            goSignIn();
          }
          return out;
        });
      })
      .catch(function () {
        return { ok: false, status: 0, data: null, retryAfter: null };
      });
  }

  function loadAccount() {
    return api("/api/me").then(function (res) {
      if (!res.ok) return null;
      account = res.data;
      setText($("account-name"), account.name);
      setText($("account-credits"), String(account.credits));
      show($("account"), true);
      document.dispatchEvent(new CustomEvent("sf:account", { detail: account }));
      return account;
    });
  }

  function wireSignOut() {
    var button = $("signout");
    if (!button) return;
    button.addEventListener("click", function () {
      clearToken();
      window.location.assign("/signin");
    });
  }

  // ------------------------------------------------------------------ sign-in

  function initSignIn() {
    var form = $("signin-form");
    var input = $("token");
    var error = $("signin-error");
    var next = safeNext(new URLSearchParams(window.location.search).get("next"));
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var value = input.value.trim();
      show(error, false);
      if (!value) {
        setText(error, "Paste your API token first.");
        show(error, true);
        input.focus();
        return;
      }
      var previous = token();
      storeToken(value, true);
      api("/api/me", { auth: false }).then(function (res) {
        if (res.ok) {
          window.location.assign(next);
          return;
        }
        if (previous) storeToken(previous, false);
        else clearToken();
        setText(
          error,
          res.status === 401 ? "That token was not accepted: " + describe(res) : describe(res),
        );
        show(error, true);
      });
    });
    if (token()) {
      loadAccount();
    }
  }

  // ------------------------------------------------------------------ create

  function initCreate() {
    var form = $("create-form");
    var prompt = $("prompt");
    var duration = $("duration_s");
    var range = $("duration-range");
    var vocals = $("has_vocals");
    var style = $("style_strength");
    var lyrics = $("lyrics");
    var submit = $("create-submit");
    var error = $("form-error");
    var cooldown = null;

    function currentCost() {
      var d = Number(duration.value);
      if (!duration.value || !isFinite(d) || d <= 0 || Math.floor(d) !== d) return null;
      return creditsFor(d, vocals.checked);
    }

    function refreshCost() {
      var cost = currentCost();
      setText($("cost-credits"), cost == null ? "–" : String(cost));
      var short = account && cost != null && cost > account.credits;
      show($("cost-warning"), !!short);
    }

    prompt.addEventListener("input", function () {
      setText($("prompt-count"), String(prompt.value.length));
    });
    duration.addEventListener("input", function () {
      var d = Number(duration.value);
      if (isFinite(d)) range.value = String(Math.min(300, Math.max(5, d)));
      refreshCost();
    });
    range.addEventListener("input", function () {
      duration.value = range.value;
      refreshCost();
    });
    vocals.addEventListener("change", refreshCost);
    style.addEventListener("input", function () {
      setText($("style-out"), Number(style.value).toFixed(2));
    });
    document.addEventListener("sf:account", function (event) {
      setText($("balance"), String(event.detail.credits));
      refreshCost();
    });
    refreshCost();

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (cooldown) return;
      show(error, false);
      form.querySelectorAll("[aria-invalid]").forEach(function (el) {
        el.removeAttribute("aria-invalid");
      });
      var body = {
        prompt: prompt.value,
        duration_s: duration.value === "" ? null : Number(duration.value),
        has_vocals: vocals.checked,
        style_strength: Number(style.value),
        lyrics: lyrics.value.trim() ? lyrics.value : null,
      };
      submit.disabled = true;
      setText(submit, "Creating…");
      api("/api/tracks", { method: "POST", body: body }).then(function (res) {
        if (res.ok) {
          window.location.assign("/tracks/" + res.data.track_id);
          return;
        }
        submit.disabled = false;
        setText(submit, "Create track");
        if (res.status === 401) return;
        error.dataset.status = String(res.status);
        setText(error, describe(res));
        show(error, true);
        errorFields(res).forEach(function (name) {
          var field = form.elements.namedItem(name);
          if (field && field.setAttribute) field.setAttribute("aria-invalid", "true");
        });
        if (res.status === 402) loadAccount();
        if (res.status === 429) startCooldown(Number(res.retryAfter) || 5);
      });
    });

    function startCooldown(seconds) {
      var left = Math.max(1, Math.ceil(seconds));
      submit.disabled = true;
      function tick() {
        if (left <= 0) {
          clearInterval(cooldown);
          cooldown = null;
          submit.disabled = false;
          setText(submit, "Create track");
          return;
        }
        setText(submit, "Try again in " + left + " s");
        left -= 1;
      }
      tick();
      cooldown = setInterval(tick, 1000);
    }
  }

  // ------------------------------------------------------------------ library

  var STATUS_LABELS = {
    QUEUED: "Queued",
    RENDERING: "Rendering",
    COMPLETE: "Complete",
    FAILED: "Failed",
    CANCELLED: "Cancelled",
    TERMINATED: "Terminated",
  };

  function badge(status) {
    var el = document.createElement("span");
    el.className = "badge";
    el.dataset.status = status;
    el.textContent = STATUS_LABELS[status] || status;
    return el;
  }

  function initLibrary() {
    var list = $("library");
    var status = $("library-status");
    var more = $("load-more");
    var offset = 0;
    var limit = 24;

    function item(track) {
      var li = document.createElement("li");
      li.className = "library-item";
      li.dataset.trackId = track.id;
      var link = document.createElement("a");
      link.href = "/tracks/" + track.id;
      link.className = "library-link";
      var thumb = document.createElement("div");
      thumb.className = "thumb";
      if (track.cover_url) {
        var img = document.createElement("img");
        img.src = track.cover_url;
        img.alt = "";
        img.loading = "lazy";
        img.width = 72;
        img.height = 72;
        thumb.appendChild(img);
      }
      var text = document.createElement("div");
      text.className = "library-text";
      var title = document.createElement("span");
      title.className = "library-title";
      title.textContent = track.prompt;
      var meta = document.createElement("span");
      meta.className = "muted small";
      var length = track.audio && track.audio.duration_s ? track.audio.duration_s : track.duration_s;
      meta.textContent =
        formatDuration(length) + (track.has_vocals ? " · vocals" : "") + " · " + formatDate(track.created_at);
      text.appendChild(title);
      text.appendChild(meta);
      link.appendChild(thumb);
      link.appendChild(text);
      link.appendChild(badge(track.status));
      li.appendChild(link);
      return li;
    }

    function load() {
      more.disabled = true;
      api("/api/tracks?limit=" + limit + "&offset=" + offset).then(function (res) {
        more.disabled = false;
        if (!res.ok) {
          if (res.status !== 401) setText(status, describe(res));
          return;
        }
        res.data.items.forEach(function (track) {
          list.appendChild(item(track));
        });
        offset += res.data.items.length;
        if (res.data.total === 0) {
          status.textContent = "";
          var empty = document.createElement("span");
          empty.textContent = "No tracks yet. ";
          var create = document.createElement("a");
          create.href = "/create";
          create.textContent = "Create your first one.";
          status.appendChild(empty);
          status.appendChild(create);
        } else {
          setText(status, res.data.total + (res.data.total === 1 ? " track" : " tracks"));
        }
        show(more, offset < res.data.total);
      });
    }

    more.addEventListener("click", load);
    load();
  }

  // ------------------------------------------------------------------ track

  var STEP_LABELS = {
    queued: "Waiting for a worker",
    preparing: "Preparing",
    provider_queue: "Waiting for provider capacity",
    generating: "Generating audio",
    checking: "Checking the audio",
    storing: "Storing the audio",
    cover: "Drawing the cover",
    finishing: "Finishing",
    done: "Done",
  };

  function initTrack() {
    var trackId = document.body.dataset.trackId;
    var audio = $("audio");
    var canvas = $("waveform");
    var playButton = $("play");
    var message = $("action-msg");
    var seenLogs = {};
    var history = [];
    var track = null;
    var job = null;
    var source = null;
    var finished = false;
    var peaks = null;

    document.body.dataset.statusHistory = "";

    function pageError(text) {
      setText($("page-error"), text);
      show($("page-error"), true);
    }

    function notify(text, kind) {
      message.textContent = text;
      message.dataset.kind = kind || "info";
      show(message, true);
    }

    function renderTrack(t) {
      track = t;
      setText($("track-title"), t.prompt);
      document.title = t.prompt.slice(0, 60) + " · SoundFoundry";
      var bits = [formatDuration(t.audio && t.audio.duration_s ? t.audio.duration_s : t.duration_s)];
      if (t.has_vocals) bits.push("vocals");
      bits.push("style " + Number(t.style_strength).toFixed(2));
      if (t.provider) bits.push("by " + t.provider);
      bits.push(formatDate(t.created_at));
      setText($("track-meta"), bits.join(" · "));
      var cover = $("cover");
      if (t.cover_url) {
        if (cover.getAttribute("src") !== t.cover_url) cover.src = t.cover_url;
        show(cover, true);
        $("download-cover").href = t.cover_url;
        show($("download-cover"), true);
      } else {
        show($("download-cover"), false);
      }
      if (t.status === "COMPLETE" && t.file_url) {
        // Links are re-signed on every read: reload the player only for another file.
        if (pathOf(audio.getAttribute("src")) !== pathOf(t.file_url)) audio.src = t.file_url;
        renderDownloads(t);
        peaks = t.audio && Array.isArray(t.audio.peaks) ? t.audio.peaks : null;
        show($("player-card"), true);
        renderFacts(t);
        drawWaveform();
        document.body.dataset.renditions = t.renditions_state || "none";
        if (t.renditions_state === "pending") waitForRenditions();
      }
    }

    function pathOf(url) {
      return url ? url.split("?")[0] : "";
    }

    var renditionsWait = null;
    var renditionsTries = 0;

    function waitForRenditions() {
      // The mastered files follow COMPLETE by a few seconds; the job stream has ended.
      if (renditionsWait !== null || renditionsTries >= 150) return;
      renditionsTries += 1;
      renditionsWait = window.setTimeout(function () {
        renditionsWait = null;
        refreshTrack();
      }, 2000);
    }

    function renderDownloads(t) {
      var files = Array.isArray(t.renditions) ? t.renditions : [];
      var main = files.length ? files[0] : null;
      var button = $("download-audio");
      button.href = main ? main.url : t.file_url;
      setText(button, main ? "Download " + main.format.toUpperCase() : "Download audio");
      var others = $("download-formats");
      others.textContent = "";
      files.slice(1).forEach(function (file) {
        var link = document.createElement("a");
        link.href = file.url;
        link.setAttribute("download", "");
        link.dataset.format = file.format;
        link.className = "linklike";
        link.textContent = file.format.toUpperCase();
        var detail = [];
        if (file.bitrate_kbps) detail.push(file.bitrate_kbps + " kbps");
        if (file.size_bytes) detail.push((file.size_bytes / 1e6).toFixed(1) + " MB");
        if (!file.stored) detail.push("made on download");
        link.title = detail.join(", ");
        others.appendChild(link);
      });
      show(others, files.length > 1);
    }

    function renderFacts(t) {
      var facts = $("facts");
      facts.textContent = "";
      var a = t.audio || {};
      var rows = [
        ["Length", formatDuration(a.duration_s)],
        ["Sample rate", a.sample_rate ? (a.sample_rate / 1000).toFixed(1) + " kHz" : null],
        ["Channels", a.channels === 2 ? "stereo" : a.channels === 1 ? "mono" : a.channels],
        ["Loudness", a.loudness_lufs != null ? a.loudness_lufs.toFixed(1) + " LUFS" : null],
        ["True peak", a.true_peak_dbtp != null ? a.true_peak_dbtp.toFixed(1) + " dBTP" : null],
        ["Tempo", a.bpm ? Math.round(a.bpm) + " BPM" : null],
        ["Provider", t.provider],
      ];
      rows.forEach(function (row) {
        if (row[1] == null || row[1] === "") return;
        var wrap = document.createElement("div");
        var dt = document.createElement("dt");
        dt.textContent = row[0];
        var dd = document.createElement("dd");
        dd.textContent = String(row[1]);
        wrap.appendChild(dt);
        wrap.appendChild(dd);
        facts.appendChild(wrap);
      });
    }

    function renderStatus(s) {
      if (history[history.length - 1] !== s.status) {
        history.push(s.status);
        document.body.dataset.statusHistory = history.join(",");
      }
      var b = $("status-badge");
      b.dataset.status = s.status;
      setText(b, STATUS_LABELS[s.status] || s.status);
      document.body.dataset.status = s.status;
      setText($("status-text"), STATUS_LABELS[s.status] || s.status);
      var terminal = ["COMPLETE", "FAILED", "CANCELLED", "TERMINATED"].indexOf(s.status) >= 0;
      setText($("step-text"), terminal ? "" : STEP_LABELS[s.step] || s.step);
      setText($("attempts-text"), s.attempts > 1 && !terminal ? "attempt " + s.attempts : "");
      var pct = Math.round((s.status === "COMPLETE" ? 1 : s.progress || 0) * 100);
      var bar = $("progress");
      bar.setAttribute("aria-valuenow", String(pct));
      bar.dataset.state = s.status;
      $("progress-fill").style.width = pct + "%";
      var err = $("job-error");
      if (s.status === "FAILED" || s.status === "TERMINATED") {
        var why = s.error_message || "The track could not be made";
        why = why.charAt(0).toUpperCase() + why.slice(1);
        if (s.error_code) why += " (" + s.error_code + ")";
        if (!/[.!?]$/.test(why)) why += ".";
        setText(err, why + " Your credits were refunded.");
        show(err, true);
      } else if (s.status === "CANCELLED") {
        setText(err, "Cancelled. Your credits were refunded.");
        show(err, true);
      } else {
        show(err, false);
      }
      show($("cancel"), !terminal);
    }

    function renderLog(entry, id) {
      var key = id != null ? String(id) : entry.ts + entry.event + entry.message;
      if (seenLogs[key]) return;
      seenLogs[key] = true;
      var li = document.createElement("li");
      li.className = "log-entry";
      li.dataset.level = entry.level;
      var time = document.createElement("time");
      time.dateTime = entry.ts;
      time.textContent = formatTime(entry.ts);
      var text = document.createElement("span");
      text.className = "log-text";
      text.textContent = entry.message || entry.event;
      li.appendChild(time);
      li.appendChild(text);
      var tags = [];
      if (entry.provider) tags.push(entry.provider);
      if (entry.attempt > 1) tags.push("attempt " + entry.attempt);
      if (entry.error_code) tags.push(entry.error_code);
      if (tags.length) {
        var tag = document.createElement("span");
        tag.className = "log-tags";
        tag.textContent = tags.join(" · ");
        li.appendChild(tag);
      }
      $("log").appendChild(li);
      show($("log-empty"), false);
    }

    function refreshTrack() {
      return api("/api/tracks/" + trackId).then(function (res) {
        if (res.ok) renderTrack(res.data);
        return res;
      });
    }

    function connect() {
      if (!job || finished) return;
      var url = "/api/jobs/" + job.id + "/events?token=" + encodeURIComponent(token() || "");
      source = new EventSource(url);
      source.addEventListener("status", function (event) {
        renderStatus(JSON.parse(event.data));
      });
      source.addEventListener("log", function (event) {
        renderLog(JSON.parse(event.data), event.lastEventId);
      });
      source.addEventListener("open", function () {
        document.body.dataset.stream = "open";
      });
      source.addEventListener("done", function () {
        finished = true;
        source.close();
        document.body.dataset.stream = "done";
        refreshTrack();
        loadAccount();
      });
      source.addEventListener("closed", function (event) {
        // The server ended the stream: an idle job (reconnect later, the job may move
        // again) or a revoked token (stop; the next API call says why).
        source.close();
        var reason = JSON.parse(event.data || "{}").reason;
        document.body.dataset.stream = "closed";
        if (reason === "idle") window.setTimeout(connect, 60000);
        else pageError("Live updates stopped: sign in again.");
      });
      source.addEventListener("error", function () {
        if (finished || source.readyState !== EventSource.CLOSED) return; // it retries itself
        // The server refused the stream (e.g. token revoked): check why, then retry.
        api("/api/jobs/" + job.id).then(function (res) {
          if (res.ok) {
            renderStatus(res.data);
            if (["QUEUED", "RENDERING"].indexOf(res.data.status) >= 0) {
              window.setTimeout(connect, 3000);
            } else {
              finished = true;
              refreshTrack();
            }
          } else if (res.status !== 401) {
            pageError("Live updates stopped: " + describe(res));
          }
        });
      });
    }

    // -- waveform

    function drawWaveform() {
      if (!canvas || $("player-card").hidden) return;
      var ratio = window.devicePixelRatio || 1;
      var width = canvas.clientWidth;
      var height = canvas.clientHeight || 80;
      if (!width) return;
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      var ctx = canvas.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);
      var styles = getComputedStyle(document.documentElement);
      var played = styles.getPropertyValue("--accent").trim() || "#5b4bff";
      var rest = styles.getPropertyValue("--wave").trim() || "#c9c6e8";
      var data = peaks && peaks.length ? peaks : [];
      var progress = audio.duration ? audio.currentTime / audio.duration : 0;
      var bar = 3;
      var gap = 1;
      var bars = Math.max(1, Math.floor(width / (bar + gap)));
      var mid = height / 2;
      for (var i = 0; i < bars; i++) {
        var value = 0.04;
        if (data.length) {
          var from = Math.floor((i * data.length) / bars);
          var to = Math.max(from + 1, Math.floor(((i + 1) * data.length) / bars));
          for (var j = from; j < to && j < data.length; j++) value = Math.max(value, data[j]);
        }
        var h = Math.max(2, value * (height - 4));
        ctx.fillStyle = i / bars < progress ? played : rest;
        ctx.fillRect(i * (bar + gap), mid - h / 2, bar, h);
      }
      canvas.dataset.bars = String(data.length);
    }

    canvas.addEventListener("click", function (event) {
      if (!audio.duration) return;
      var rect = canvas.getBoundingClientRect();
      audio.currentTime = ((event.clientX - rect.left) / rect.width) * audio.duration;
      drawWaveform();
    });
    audio.addEventListener("timeupdate", drawWaveform);
    audio.addEventListener("loadedmetadata", drawWaveform);
    audio.addEventListener("play", function () {
      playButton.classList.add("playing");
      playButton.setAttribute("aria-label", "Pause");
    });
    audio.addEventListener("pause", function () {
      playButton.classList.remove("playing");
      playButton.setAttribute("aria-label", "Play");
    });
    playButton.addEventListener("click", function () {
      if (audio.paused) {
        var started = audio.play();
        if (started && started.catch) {
          started.catch(function (e) {
            notify("Could not play the audio: " + e.message, "error");
          });
        }
      } else {
        audio.pause();
      }
    });
    window.addEventListener("resize", drawWaveform);

    // -- actions

    function unavailable(res) {
      return res.status === 404 || res.status === 405 || res.status === 501;
    }

    $("regen-cover").addEventListener("click", function () {
      var button = $("regen-cover");
      button.disabled = true;
      api("/api/tracks/" + trackId + "/increment-visual-version", { method: "POST" }).then(
        function (res) {
          button.disabled = false;
          if (res.ok) {
            notify("New cover drawn.", "ok");
            refreshTrack();
          } else if (unavailable(res)) {
            notify("Regenerating the cover is not available on this server yet.", "info");
          } else if (res.status !== 401) {
            notify(describe(res), "error");
          }
        },
      );
    });

    $("share").addEventListener("click", function () {
      var button = $("share");
      button.disabled = true;
      api("/api/tracks/" + trackId + "/share", { method: "POST" }).then(function (res) {
        button.disabled = false;
        if (res.ok) {
          var d = res.data || {};
          var url = d.share_url || d.url || d.public_url;
          if (!url) {
            notify("Shared.", "ok");
            return;
          }
          message.textContent = "Share link: ";
          var a = document.createElement("a");
          a.href = url;
          a.id = "share-link";
          a.textContent = url;
          a.target = "_blank";
          a.rel = "noopener";
          message.appendChild(a);
          message.dataset.kind = "ok";
          show(message, true);
          if (navigator.clipboard && navigator.clipboard.writeText) {
            navigator.clipboard.writeText(url).then(
              function () {
                message.appendChild(document.createTextNode(" (copied)"));
              },
              function () {},
            );
          }
        } else if (unavailable(res)) {
          notify("Sharing is not available on this server yet.", "info");
        } else if (res.status !== 401) {
          notify(describe(res), "error");
        }
      });
    });

    $("cancel").addEventListener("click", function () {
      if (!job) return;
      var button = $("cancel");
      button.disabled = true;
      api("/api/jobs/" + job.id + "/cancel", { method: "POST" }).then(function (res) {
        button.disabled = false;
        if (!res.ok && res.status !== 401) pageError(describe(res));
      });
    });

    // -- start

    refreshTrack().then(function (res) {
      if (!res.ok) {
        if (res.status === 404) {
          setText($("track-title"), "Track not found");
          pageError("There is no such track in your library.");
          show($("progress-card"), false);
        } else if (res.status !== 401) {
          pageError(describe(res));
        }
        return;
      }
      return api("/api/jobs/" + res.data.job_id).then(function (jobRes) {
        if (!jobRes.ok) {
          if (jobRes.status !== 401) pageError(describe(jobRes));
          return;
        }
        job = jobRes.data;
        renderStatus(job);
        var link = $("temporal-link");
        link.href = job.temporal_ui_url;
        show(link, true);
        connect();
      });
    });
  }

  // ------------------------------------------------------------------ boot

  function boot() {
    adoptDevToken();
    wireSignOut();
    if (page === "signin") {
      initSignIn();
      return;
    }
    if (page === "not-found") {
      if (token()) loadAccount();
      return;
    }
    if (!token()) {
      goSignIn();
      return;
    }
    loadAccount();
    if (page === "create") initCreate();
    else if (page === "library") initLibrary();
    else if (page === "track") initTrack();
  }

  boot();
})();
