from twisted.application.service import ServiceMaker

dlba = ServiceMaker(
    "dlba",
    "dlba.tap",
    "Decrypting Load Balancing Array node: TLS-terminating HTTP load balancer",
    "dlba",
)
