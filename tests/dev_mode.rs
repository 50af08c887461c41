//! `aegis dev`'s OpenBao child: its root token is not on its command line, which every
//! local user can read in /proc/PID/cmdline; it travels in the child's environment, which
//! only its owner can read.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_servers_root_token_is_not_on_its_command_line() {
    let mut dev = aegis::dev::DevBao::start(&common::bao_bin())
        .await
        .expect("the dev server starts");
    let pid = dev.pid().expect("running");
    let token = dev.root_token.expose().to_string();
    assert!(token.len() > 20, "{token}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("server -dev"), "{cmdline}");
    assert!(
        !cmdline.contains(&token),
        "the root token is on the command line: {cmdline}"
    );
    assert!(!cmdline.contains("root-token"), "{cmdline}");
    // The server took it from the environment: it is the root token, and provisioning works.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains(&format!("BAO_DEV_ROOT_TOKEN_ID={token}")));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(format!("/proc/{pid}/environ"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "environ readable by others: {mode:o}");
    dev.provision().await.expect("the root token is accepted");
    dev.stop().await;
}
