//! The gRPC code committed in `src/api/grpc/generated/` is exactly what `tonic-prost-build`
//! generates from `proto/` (with a vendored `protoc`, so no system compiler is needed):
//! a proto changed without regenerating, or a hand-edited generated file, fails here.
//! To regenerate after changing the proto: `AEGIS_BLESS_PROTO=1 cargo test --test proto_drift`.

use std::path::Path;

#[test]
fn generated_code_matches_the_proto() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed = repo.join("src/api/grpc/generated");
    let scratch = tempfile::tempdir().unwrap();
    // Only `1` blesses: `0`, empty or anything else compares against the committed files.
    let bless = std::env::var("AEGIS_BLESS_PROTO").is_ok_and(|v| v == "1");
    let out = if bless {
        committed.clone()
    } else {
        scratch.path().to_path_buf()
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"));
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&out)
        .file_descriptor_set_path(out.join("aegis.v1.descriptor.bin"))
        .compile_with_config(
            config,
            &[repo.join("proto/aegis/v1/signer.proto")],
            &[repo.join("proto")],
        )
        .expect("generate the gRPC code");
    for file in ["aegis.v1.rs", "aegis.v1.descriptor.bin"] {
        let fresh = std::fs::read(out.join(file)).unwrap();
        let kept = std::fs::read(committed.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", committed.join(file).display()));
        assert!(
            fresh == kept,
            "src/api/grpc/generated/{file} is not what proto/ generates; run: AEGIS_BLESS_PROTO=1 cargo test --test proto_drift"
        );
    }
}
