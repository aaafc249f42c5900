// tcp_store: see its header.
