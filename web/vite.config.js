import { defineConfig } from "vite";

// Served by `silo serve` under /dashboard/ (crates/silo-api/src/dashboard.rs).
export default defineConfig({
  base: "/dashboard/",
  esbuild: {
    jsxFactory: "h",
    jsxFragment: "Fragment",
    jsxInject: `import { h, Fragment } from "preact"`,
  },
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 1000 },
});
