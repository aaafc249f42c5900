// nccl_communicator: see its header.
