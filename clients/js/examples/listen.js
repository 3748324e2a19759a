import { connectPusher } from "go-pusher-client";

const pusher = connectPusher({
  url: "wss://push.example.com/ws",
  // Asked at each connect and before the token expires: your backend
  // signs a token for the signed-in user.
  getToken: async () => (await fetch("/api/pusher-token")).text(),
  onMessage: (message, offset, replayed) => console.log(offset, message, replayed ? "(missed while away)" : ""),
  onState: ({ state, code, reason, retryIn }) => console.log(state, code ?? "", reason ?? "", retryIn ?? ""),
  onRecovered: (complete, missed) => {
    // Not complete: the server no longer had every message sent while
    // this client was away. Reload what the messages would have updated.
    if (!complete) location.reload();
    else console.log(`recovered ${missed} messages`);
  },
});

document.getElementById("sign-out")?.addEventListener("click", () => pusher.stop());
