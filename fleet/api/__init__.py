"""REST API blueprints (JSON under /api). Requests are validated by fleet.api.validation against
the models in fleet.api.schemas; responses are described by fleet.api.responses; errors come from
fleet.errors; pagination is limit/offset."""
