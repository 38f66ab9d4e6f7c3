//! (being written; temporary placeholder)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StdoutMode {
    #[default]
    Auto,
    Human,
    Json,
    Off,
}
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DetectRule {
    pub agent: String,
    pub exe: Vec<String>,
    pub comm: Vec<String>,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cgroup: Vec<String>,
}
