/* spek-sentinel on-call console: confirm dangerous answers, and keep the view current by
   polling its JSON twin (/console/live/...) every few seconds, faster while an incident runs.
   No framework, no build step; served by the daemon itself. */
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-confirm]") : null;
    if (button && !window.confirm(button.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });

  var body = document.body;
  var live = body.getAttribute("data-live");
  if (!live) {
    return;
  }
  var slow = parseInt(body.getAttribute("data-poll"), 10) || 5000;
  var fast = 2000;
  var parts = {
    main: document.getElementById("main"),
    banner: document.getElementById("banner"),
    nav: document.getElementById("nav-counts")
  };
  var seen = {};
  var updated = document.getElementById("updated");
  var state = document.getElementById("live-status");

  function typing() {
    var main = parts.main;
    var active = document.activeElement;
    if (active && main.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) {
      return true;
    }
    var fields = main.querySelectorAll("input[type=text], textarea");
    for (var i = 0; i < fields.length; i += 1) {
      if (fields[i].value) {
        return true;
      }
    }
    return false;
  }

  function swap(name, html) {
    var element = parts[name];
    if (!element || typeof html !== "string" || seen[name] === html) {
      return;
    }
    element.innerHTML = html;
    seen[name] = html;
  }

  function later(ms) {
    window.setTimeout(poll, ms);
  }

  function poll() {
    if (document.hidden) {
      later(slow);
      return;
    }
    fetch(live + window.location.search, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" }
    })
      .then(function (response) {
        if (response.status === 401) {
          var here = window.location.pathname + window.location.search;
          window.location.href = "/console/login?next=" + encodeURIComponent(here);
          throw new Error("logged out");
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        if (typing()) {
          state.textContent = "live updates paused while you type";
        } else {
          swap("main", data.main);
          state.textContent = "live";
        }
        swap("banner", data.banner);
        swap("nav", data.nav);
        updated.textContent = "updated " + data.at;
        body.classList.toggle("incident-open", !!data.incident_open);
        body.classList.toggle("rollback-running", !!data.rollback_running);
        later(data.rollback_running || data.incident_open ? fast : slow);
      })
      .catch(function (error) {
        state.textContent = "update failed: " + error.message + "; retrying";
        later(slow * 2);
      });
  }

  later(body.classList.contains("rollback-running") ? fast : slow);
})();
