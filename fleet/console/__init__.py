"""Server-rendered web console (Jinja templates, one CSS file, server-side SVG for drift bars; time
series drawn by the vendored uPlot from JSON endpoints; no JS build, no CDN). See docs/console.md."""
