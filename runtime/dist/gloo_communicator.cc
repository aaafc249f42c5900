// gloo_communicator: see its header.
