"""Ray-level code: starting or joining Ray, cluster manifests, job submission. The library never imports this."""
