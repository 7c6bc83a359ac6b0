"""Delivery: providers (APNs, FCM, noop) behind one interface, and the dispatcher feeding them."""
