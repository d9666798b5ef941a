"""natsflow as the data plane of programs written with a Numaflow SDK: the program launcher
(program.py), the server-info check (serverinfo.py), and the gRPC clients of each kind."""
