//! `raftkv`: the replicated key-value server (`raftkv agent`) and its CLI
//! (see `raftkv::cli`).

/// glibc's malloc took about a tenth of the server's CPU under load (perf,
/// 256 writing clients); mimalloc's thread-local free lists cost less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    // One TLS provider for the process (ring), whatever builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let code = raftkv::cli::run().await;
    std::process::exit(code);
}
