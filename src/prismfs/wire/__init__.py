"""Wire protocol: frames, typed messages, authentication and RPC over trio TCP.

Modules, bottom up:

* `frames`   -- the sans-I/O frame format and incremental decoder;
* `codec`    -- the one place msgspec turns messages into bytes and back;
* `messages` -- every typed message of the protocol core (handshake, errors, ping);
* `auth`     -- cluster credentials and the HMAC challenge-response;
* `tls`      -- optional TLS contexts from a cluster CA;
* `stream`   -- a framed connection over a trio stream (one writer task);
* `server`   -- the RPC server: handshake, dispatch, cancellation, limits;
* `client`   -- RPC connections and the connection pool with deadlines.
"""
