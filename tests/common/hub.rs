//! A hub's test network (tests/hub.rs, tests/hub_more.rs): the hub's
//! namespace `h` has an underlay bridge `ul` (10.241.N.254/24) with a veth to
//! each site's namespace (10.241.N.K), and the overlay bridge `br0`
//! (10.242.N.254/24) that listed peers' devices may join (bridge=br0). Each
//! site runs `taptun -c` on its `tt0` (10.242.N.K/24).

use super::*;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;

static NEXT: AtomicU32 = AtomicU32::new(200);

/// One site: a namespace with a veth to the hub's underlay.
pub struct Site {
    pub name: String,
    pub ns: Netns,
    /// Its SECRET: `@PATH` of a key file, or a passphrase.
    pub secret: String,
    pub host: u8,
}

/// The hub's namespace, its key, its peers file and the sites.
pub struct HubNet {
    pub n: u32,
    pub h: Netns,
    pub scratch: Scratch,
    pub hub_key: String,
    pub port: u16,
    pub file: PathBuf,
    pub sites: Vec<Site>,
}

impl HubNet {
    pub fn new() -> HubNet {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let n = (std::process::id() + id) % 200 + 20;
        let h = Netns::new(id, 'h');
        h.ip("link add ul type bridge");
        h.ip(&format!("addr add 10.241.{n}.254/24 dev ul"));
        h.ip("link set ul up");
        h.ip("link add br0 type bridge");
        h.ip(&format!("addr add 10.242.{n}.254/24 dev br0"));
        h.ip("link set br0 up");
        let scratch = Scratch::new();
        let hub_key = scratch.genkey("hub");
        let file = scratch.path.join("peers");
        HubNet {
            n,
            port: 21000 + n as u16,
            h,
            scratch,
            hub_key,
            file,
            sites: Vec::new(),
        }
    }

    /// Adds site K (a namespace on the underlay) with a new key, or with
    /// `passphrase` as its secret.
    pub fn site(&mut self, k: u8, passphrase: Option<&str>) -> usize {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = Netns::new(id, 's');
        // Interface names at most 15 bytes: the namespace's id and the site.
        let (outer, inner) = (format!("hu{id}x{k}"), format!("hs{id}x{k}"));
        run(Command::new("ip").args([
            "link",
            "add",
            &outer,
            "netns",
            &self.h.name,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            &ns.name,
        ]));
        self.h.ip(&format!("link set {outer} master ul up"));
        ns.ip(&format!("addr add 10.241.{}.{k}/24 dev {inner}", self.n));
        ns.ip(&format!("link set {inner} up"));
        let name = format!("s{k}");
        let secret = match passphrase {
            Some(p) => p.to_owned(),
            None => self.scratch.genkey(&name),
        };
        self.sites.push(Site {
            name,
            ns,
            secret,
            host: k,
        });
        self.sites.len() - 1
    }

    /// The public key of site `i`'s secret.
    pub fn site_pub(&self, i: usize) -> String {
        let secret = &self.sites[i].secret;
        if secret.starts_with('@') {
            return pubkey(secret);
        }
        let mut child = Command::new(TAPTUN)
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{secret}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Writes the peers file: one line per listed site, with `options`.
    pub fn write_peers(&self, listed: &[usize], options: &str) {
        let mut text = String::from("# name key options\n\n");
        for &i in listed {
            let site = &self.sites[i];
            text += &format!("{} {} {options}\n", site.name, self.site_pub(i));
        }
        self.write_file(&text);
    }

    /// Replaces the peers file with `text`, mode 644 (root's, not writable
    /// by others; -U's user reads it on SIGHUP).
    pub fn write_file(&self, text: &str) {
        let tmp = self.file.with_extension("new");
        fs::write(&tmp, text).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&tmp, &self.file).unwrap();
    }

    /// Starts the hub and waits until it listens.
    pub fn hub(&self, extra: &str) -> Proc {
        let args = format!(
            "-s -p {} -v -A {} -l {} {extra}",
            self.port,
            self.file.display(),
            self.hub_key
        );
        let mut hub = Proc::start("hub", self.h.taptun(&args), &self.scratch);
        let listening = wait_for(DEADLINE, || !hub.running() || self.h.listening(self.port));
        assert!(
            listening && hub.running(),
            "the hub did not start listening"
        );
        hub
    }

    pub fn hub_pub(&self) -> String {
        pubkey(&self.hub_key)
    }

    /// The hub's address on the underlay.
    pub fn hub_at(&self) -> SocketAddr {
        format!("10.241.{}.254:{}", self.n, self.port)
            .parse()
            .unwrap()
    }

    /// Starts site `i`'s client on `dev` (its log is NAME.log).
    pub fn client_on(&self, i: usize, dev: &str, name: &str, extra: &str) -> Proc {
        let site = &self.sites[i];
        let mut cmd = site.ns.taptun(&format!(
            "-c -m 10.241.{}.254 -p {} -v -d {dev} -k {} {extra}",
            self.n,
            self.port,
            self.hub_pub()
        ));
        cmd.args(["-l", &site.secret]);
        Proc::start(name, cmd, &self.scratch)
    }

    /// Starts site `i`'s client on its tt0 and gives tt0 its overlay address.
    pub fn client(&self, i: usize) -> Proc {
        let site = &self.sites[i];
        let proc = self.client_on(i, "tt0", &site.name, "");
        site.ns.wait_for_device("tt0");
        site.ns
            .ip(&format!("addr add {}/24 dev tt0", self.overlay(site.host)));
        proc
    }

    /// Host `host`'s address on the overlay.
    pub fn overlay(&self, host: u8) -> String {
        format!("10.242.{}.{host}", self.n)
    }

    /// Waits until site `i` pings `addr` through the hub.
    pub fn pings(&self, i: usize, addr: &str) -> bool {
        wait_for(DEADLINE, || self.sites[i].ns.ping(addr))
    }
}
