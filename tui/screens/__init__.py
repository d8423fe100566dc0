"""lamina's screens: clusters, volumes, chain, files, jobs, and the small dialogs."""
