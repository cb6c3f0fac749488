"""The edgegw runtime: configuration, supervisor, pipeline, durable buffer, MQTT forwarder, CLI."""
