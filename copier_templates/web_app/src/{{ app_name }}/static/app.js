// Adds entries through the app's API and shows them without reloading the page.
(function () {
  "use strict";

  var layout = document.querySelector("[data-api]");
  var api = layout.getAttribute("data-api");
  var form = document.getElementById("entry-form");
  var list = document.getElementById("entries");
  var count = document.getElementById("count");
  var message = document.getElementById("message");

  function show(text, isError) {
    message.textContent = text;
    message.className = isError ? "message error" : "message";
  }

  function render(entry) {
    var item = document.createElement("li");
    var title = document.createElement("strong");
    title.textContent = entry.title;
    item.appendChild(title);
    if (entry.body) {
      var body = document.createElement("p");
      body.textContent = entry.body;
      item.appendChild(body);
    }
    var time = document.createElement("time");
    time.setAttribute("datetime", entry.created_at);
    time.textContent = entry.created_at.slice(0, 16).replace("T", " ");
    item.appendChild(time);
    return item;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = form.querySelector("button");
    button.disabled = true;
    show("Saving...", false);
    fetch(api, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ title: form.title.value, body: form.body.value })
    })
      .then(function (response) {
        return response.json().then(function (data) {
          if (!response.ok) {
            throw new Error(data.error ? data.error.message : response.statusText);
          }
          return data;
        });
      })
      .then(function (entry) {
        var empty = list.querySelector(".empty");
        if (empty) { empty.remove(); }
        list.insertBefore(render(entry), list.firstChild);
        var total = list.querySelectorAll("li").length;
        count.textContent = total + (total === 1 ? " entry" : " entries");
        form.reset();
        show("Added.", false);
      })
      .catch(function (error) { show(error.message, true); })
      .then(function () { button.disabled = false; });
  });
})();
