"""HTTP/1.1 message handling for the proxy: rules, forwarding headers, canned responses."""
