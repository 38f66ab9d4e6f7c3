pub mod environ;
