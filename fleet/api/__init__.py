"""REST API blueprints (JSON under /api). Errors come from fleet.errors; pagination is limit/offset."""
