// The demo's service worker: shows each push as a notification and tells the open pages.
// What arrives is relaypush's Web Push message: {"topic","flags","blob"} for an encrypted push
// (only the wallet can read the blob), plus "title", "body" and maybe "icon", "url", "type" for
// a cleartext one.
"use strict";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch (error) {
    message = {};
  }
  const title = message.title || "You have new notifications";
  const options = {
    body: message.body || "Open to view",
    icon: message.icon,
    data: { url: message.url || "/demo/webpush" },
  };
  event.waitUntil(
    Promise.all([
      self.registration.showNotification(title, options),
      self.clients
        .matchAll({ type: "window", includeUncontrolled: true })
        .then((pages) => pages.forEach((page) => page.postMessage({ type: "push", message }))),
    ]),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.clients.openWindow(event.notification.data.url));
});
