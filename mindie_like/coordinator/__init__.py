"""The coordinator in front of several daemons (bin/ms_coordinator): conf/ms_coordinator.json validated and turned
into the SGLang Model Gateway's command line plus an nginx TLS front; no routing logic of ours."""
