"""Provider stand-ins for tests: local servers that answer like APNs and FCM.

:mod:`relaypush.testing.http2` is the server they are built on (TLS with a throwaway CA, HTTP/2
and HTTP/1.1); the APNs stand-in lives in :mod:`relaypush.testing.apns`, the FCM one in
:mod:`relaypush.testing.fcm`, the Web Push one (a push service that checks VAPID and decrypts, and
browser subscriptions to push to) in :mod:`relaypush.testing.webpush`. They ship in the
package so that users can test their own integrations against the same stand-ins.
"""

from relaypush.testing.http2 import Handler, StandInRequest, StandInResponse, StandInServer

__all__ = ["Handler", "StandInRequest", "StandInResponse", "StandInServer"]
