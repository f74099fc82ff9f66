FROM node:20-bookworm-slim AS deps
LABEL org.opencontainers.image.source="https://example.com/app" \
      org.opencontainers.image.description="An example web application"
ENV NODE_ENV=production NPM_CONFIG_LOGLEVEL=warn
WORKDIR /usr/src/app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev

FROM deps AS build
ENV NODE_ENV=development
RUN --mount=type=cache,target=/root/.npm npm ci
COPY . .
RUN npm run build && npm prune --production

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /usr/src/app
RUN apt-get update \
 && apt-get install -y --no-install-recommends dumb-init curl \
 && rm -rf /var/lib/apt/lists/*
COPY --chown=node:node --from=build /usr/src/app/node_modules ./node_modules
COPY --chown=node:node --from=build /usr/src/app/dist ./dist
COPY --chown=node:node package.json ./
USER node
EXPOSE 3000/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["dumb-init", "--"]
CMD ["node", "dist/server.js"]
