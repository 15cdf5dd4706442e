"""Every Prometheus metric of Mailsluice, one module per component over the label helpers in
`labels`. Names are mailsluice_<component>_<thing>_<unit|total>; a label value is a pool or
provider name from configuration, or one of the fixed tuples of these modules: never an address,
a message id or a raw domain (a domain that is not a provider counts as `other`).
"""
