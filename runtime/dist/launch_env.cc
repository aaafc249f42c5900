// launch_env: see its header.
