//! Prints `no-tls: ok` when a build without the `tls` feature refuses every URL
//! that asks for TLS with `Error::InvalidConfig`, and still takes plain ones.

use diesel_async::AsyncPgConnection;
use diesel_rwsplit::{Error, SwitchablePool};

async fn build(url: &str) -> Result<(), Error> {
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(url)
        .verify_on_build(false)
        .build()
        .await
        .map(drop)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let base = "postgres://app:s3cret@127.0.0.1:1/db";
    for params in [
        "sslmode=require",
        "sslmode=verify-ca&sslrootcert=/ca.pem",
        "sslmode=verify-full&sslrootcert=system",
        "sslrootcert=/ca.pem",
        "sslcert=/c.pem&sslkey=/k.pem",
    ] {
        match build(&format!("{base}?{params}")).await {
            Err(Error::InvalidConfig(message)) if message.contains("`tls` feature") => {
                assert!(!message.contains("s3cret"), "{message}");
            }
            other => panic!("{params}: expected a configuration error, got {other:?}"),
        }
    }
    for params in ["sslmode=disable", "sslmode=prefer", "sslmode=allow"] {
        build(&format!("{base}?{params}"))
            .await
            .unwrap_or_else(|e| panic!("{params}: {e}"));
    }
    println!("no-tls: ok");
}
