"""citysense alerts: alarm rules over the store and the gateways' status, the alarm lifecycle
(raised, acknowledged, cleared) kept durably, and at-least-once notifications (webhooks,
DingTalk/WeCom robots, MQTT retained alarm state) from a durable queue."""
