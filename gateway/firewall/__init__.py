"""The network guard: inventory + profiles -> one nftables table, applied atomically.

`model` holds the renderer's input, `render` the pure renderer and the counter parser,
`profiles` the profile files and `mud` the RFC 8520 MUD import. docs/firewall.md explains
the policy.
"""
