// The report page's script, inlined into report.html by html_report.py: filters, keep/delete/relabel marks and
// the decisions export (a Blob download and the hidden #decisions-json textarea). Vanilla JS, no network.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var decisions = {};
  var classSelect = document.getElementById("filter-class");
  var tagSelect = document.getElementById("filter-tag");

  var filtered = Array.prototype.map.call(document.querySelectorAll("[data-filter]"), function (el) {
    var tags = el.getAttribute("data-tags").split(" ");
    return {el: el, classes: JSON.parse(el.getAttribute("data-classes")), tags: tags};
  });

  function applyFilters() {
    var wanted = classSelect.value, tag = tagSelect.value;
    filtered.forEach(function (item) {
      var hide = !((wanted === "" || item.classes.indexOf(wanted) >= 0) && (tag === "" || item.tags.indexOf(tag) >= 0));
      if (item.el.hidden !== hide) { item.el.hidden = hide; }  // untouched elements cost no style work
    });
    var groups = document.querySelectorAll(".group[data-filter]:not([hidden])").length;
    var cards = document.querySelectorAll(".card[data-filter]:not([hidden])").length;
    document.getElementById("shown-count").textContent = "shown: " + groups + " duplicate groups, " + cards +
      " other images";
  }

  function paint(index) {
    var decision = decisions[data.images[index].path];
    document.querySelectorAll('.card[data-i="' + index + '"]').forEach(function (card) {
      card.classList.remove("d-keep", "d-delete", "d-relabel");
      card.querySelectorAll("button").forEach(function (b) { b.classList.remove("on"); });
      var select = card.querySelector("select");
      if (select) { select.value = decision && decision.action === "relabel" ? decision.target_class : ""; }
      if (decision) {
        card.classList.add("d-" + decision.action);
        var button = card.querySelector('button[data-act="' + decision.action + '"]');
        if (button) { button.classList.add("on"); }
      }
    });
    showCount();
  }

  function showCount() {
    var counts = {keep: 0, "delete": 0, relabel: 0};
    Object.keys(decisions).forEach(function (path) { counts[decisions[path].action] += 1; });
    document.getElementById("decision-count").textContent = counts.keep + " keep, " + counts["delete"] +
      " delete, " + counts.relabel + " relabel";
  }

  function decide(index, action, target) {
    var image = data.images[index];
    var current = decisions[image.path];
    if (!action || (current && current.action === action && action !== "relabel")) {
      delete decisions[image.path];
    } else {
      var decision = {action: action, "class": image["class"], sha256: image.sha256,
                      decided: new Date().toISOString()};
      if (action === "relabel") { decision.target_class = target; }
      decisions[image.path] = decision;
    }
    paint(index);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest(".decide button");
    if (!button) { return; }
    decide(Number(button.closest(".card").getAttribute("data-i")), button.getAttribute("data-act"));
  });
  document.addEventListener("change", function (event) {
    var select = event.target.closest(".decide select");
    if (!select) { return; }
    decide(Number(select.closest(".card").getAttribute("data-i")), select.value ? "relabel" : "", select.value);
  });

  function exportText() {
    var body = {
      schema_version: data.decisions_schema_version,
      decisions_type: data.decisions_type,
      dataset_dir: data.dataset_dir,
      report_path: data.report_path,
      report_created: data.report_created,
      created: new Date().toISOString(),
      source: "html_report.py",
      decisions: decisions
    };
    return JSON.stringify(body, null, 2) + "\n";
  }

  document.getElementById("export").addEventListener("click", function () {
    var text = exportText();
    document.getElementById("decisions-json").value = text;
    var link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
    link.download = data.decisions_file_name;
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
  });
  document.getElementById("clear").addEventListener("click", function () {
    var marked = Object.keys(decisions);
    decisions = {};
    data.images.forEach(function (image, index) { if (marked.indexOf(image.path) >= 0) { paint(index); } });
    showCount();
  });
  classSelect.addEventListener("change", applyFilters);
  tagSelect.addEventListener("change", applyFilters);
  applyFilters();
  window.birdplaneExport = exportText;
})();
