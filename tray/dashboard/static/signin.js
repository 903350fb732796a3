// The answer to a one-time sign-in code: keep the token for this tab, then open the dashboard.
import { keepToken } from "./common.js";

const meta = document.querySelector('meta[name="ollama-manager-session"]');
if (meta) keepToken(meta.content);
location.replace("/");
