"""Ray Serve applications, one per method, plus the shared HTTP layer (`serve_apps.http`)."""
