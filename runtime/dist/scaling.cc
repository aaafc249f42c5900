// scaling: see its header.
