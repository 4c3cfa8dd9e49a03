"""TorchServe's APIs, for TorchServe clients unchanged.

``common`` (error body, version spelling, endpoint guard), ``inference_http`` (port 8000
routes), ``inference_grpc`` (InferenceAPIsService), ``management`` (the operations both
management APIs share), ``management_http`` (port 8081), ``management_grpc``
(ManagementAPIsService) and ``dialect``, which builds them for one server.
"""
